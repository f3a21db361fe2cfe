"""Distillation of class predictions among users of one label space (beyond the paper)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from client_app.app import build_trainer
from fedmuscle_flwr import wire
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.loss import (
    class_probabilities,
    distillation_loss,
    label_space_key,
    teacher_by_confidence,
    teacher_certainty,
    teacher_mean,
)
from fedmuscle_flwr.payload import UserPayload
from server_app.strategy import FedMuscleStrategy
from tests.test_strategy import DIM, FakeGrid, config, representation, send
from tests.tiny import TINY_FEDERATION

pytestmark = pytest.mark.usefixtures("flower_task_identity")

SPACE_A = label_space_key(["circle", "square", "triangle"])
SPACE_B = label_space_key(["cat", "dog", "bird"])


def probs(rows: int, classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.softmax(torch.randn(rows, classes, generator=g), dim=-1)


# ------------------------------------------------------------------ the loss


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    classes=st.integers(2, 7),
    temperature=st.floats(0.5, 4.0),
    seed=st.integers(0, 10_000),
)
def test_distillation_loss_is_nonnegative_and_zero_only_at_the_teacher(
    rows, classes, temperature, seed
):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=g) * 3
    teacher = class_probabilities(logits, temperature=temperature)
    assert float(distillation_loss(logits, teacher, temperature=temperature)) == pytest.approx(
        0.0, abs=1e-5
    )
    other = probs(rows, classes, seed + 1)
    loss = float(distillation_loss(logits, other, temperature=temperature))
    expected = temperature**2 * float(
        (other * (other.log() - F.log_softmax(logits / temperature, dim=-1))).sum(-1).mean()
    )
    assert loss >= -1e-6 and loss == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_a_gradient_step_on_the_distillation_loss_moves_the_student_to_the_teacher():
    logits = torch.zeros(4, 3, requires_grad=True)
    teacher = torch.tensor([[0.8, 0.1, 0.1]] * 4)
    before = float(distillation_loss(logits, teacher, temperature=2.0).detach())
    distillation_loss(logits, teacher, temperature=2.0).backward()
    with torch.no_grad():
        after = float(distillation_loss(logits - 0.5 * logits.grad, teacher, temperature=2.0))
    assert after < before
    assert (logits.grad[:, 0] < 0).all()  # the teacher's class gains


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), classes=st.integers(2, 7), seed=st.integers(0, 10_000))
def test_row_weights_scale_each_rows_share_of_the_distillation_loss(rows, classes, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=g) * 2
    teacher = probs(rows, classes, seed + 1)
    plain = distillation_loss(logits, teacher, temperature=2.0)
    ones = distillation_loss(logits, teacher, temperature=2.0, row_weights=torch.ones(rows))
    assert torch.allclose(plain, ones, rtol=1e-5, atol=1e-6)  # all ones: the plain loss
    zeros = distillation_loss(logits, teacher, temperature=2.0, row_weights=torch.zeros(rows))
    assert float(zeros) == 0.0  # a row of weight 0 never pulls
    first = torch.zeros(rows)
    first[0] = 1.0
    alone = distillation_loss(logits[:1], teacher[:1], temperature=2.0)
    weighted = distillation_loss(logits, teacher, temperature=2.0, row_weights=first)
    assert torch.allclose(weighted, alone / rows, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one per row"):
        distillation_loss(logits, teacher, temperature=2.0, row_weights=torch.ones(rows + 1))


def test_teacher_certainty_is_one_for_one_hot_and_zero_for_uniform_rows():
    rows = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    certainty = teacher_certainty(rows)
    assert certainty[0] == pytest.approx(1.0) and certainty[1] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < float(certainty[2]) < 1.0


def test_label_space_key_names_the_classes_in_order_and_their_count():
    assert label_space_key(["a", "b"]) == label_space_key(["a", "b"])
    assert label_space_key(["a", "b"]) != label_space_key(["b", "a"])
    assert label_space_key(["a", "b", "c"]).startswith("3:")
    with pytest.raises(ValueError, match="at least 2 classes"):
        label_space_key(["a"])


def test_teacher_mean_is_a_probability_row_and_refuses_mixed_shapes():
    mean = teacher_mean([probs(5, 3, 0), probs(5, 3, 1)])
    assert torch.allclose(mean, (probs(5, 3, 0) + probs(5, 3, 1)) / 2)
    assert torch.allclose(mean.sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="one \\(B, K\\) shape"):
        teacher_mean([probs(5, 3, 0), probs(5, 4, 1)])
    with pytest.raises(ValueError, match="at least one teacher"):
        teacher_mean([])


def certainty(p: torch.Tensor) -> torch.Tensor:
    return 1 - (-(p * p.log()).sum(-1)) / torch.log(torch.tensor(float(p.shape[-1])))


@settings(max_examples=40, deadline=None)
@given(
    teachers=st.integers(1, 4),
    rows=st.integers(1, 5),
    classes=st.integers(2, 6),
    seed=st.integers(0, 10_000),
)
def test_the_confidence_weighted_teacher_is_a_convex_mix_of_the_peers_rows(
    teachers, rows, classes, seed
):
    peers = [probs(rows, classes, seed + m) for m in range(teachers)]
    teacher = teacher_by_confidence(peers)
    stacked = torch.stack(peers)
    assert torch.allclose(teacher.sum(-1), torch.ones(rows), atol=1e-5)
    # a convex mix per row and class: within the peers' range
    assert (teacher >= stacked.min(0).values - 1e-6).all()
    assert (teacher <= stacked.max(0).values + 1e-6).all()
    # the surer peer on a row pulls the mix towards itself (two peers)
    if teachers == 2:
        a, b = peers
        sure_a = certainty(a) > certainty(b) + 1e-4
        closer_a = (teacher - a).abs().sum(-1) <= (teacher - b).abs().sum(-1) + 1e-6
        assert closer_a[sure_a].all()


def test_a_sure_peer_outweighs_an_unsure_one_and_equal_certainty_gives_the_mean():
    sure = torch.tensor([[0.97, 0.01, 0.01, 0.01]])
    unsure = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    assert torch.allclose(teacher_by_confidence([sure, unsure]), sure, atol=1e-6)
    assert torch.allclose(teacher_by_confidence([unsure, unsure]), unsure)  # no one sure: mean
    mirrored = torch.tensor([[0.01, 0.97, 0.01, 0.01]])
    assert torch.allclose(
        teacher_by_confidence([sure, mirrored]), teacher_mean([sure, mirrored]), atol=1e-6
    )
    with pytest.raises(ValueError, match="one \\(B, K\\) shape"):
        teacher_by_confidence([sure, torch.tensor([[0.5, 0.5]])])


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), classes=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_a_lone_peer_is_the_teacher_under_either_rule_bit_for_bit(rows, classes, seed):
    """With one label-space peer (the real-data federation's pairs) the rule cannot matter."""
    peer = probs(rows, classes, seed)
    peer[0] = 1.0 / classes  # a uniform row takes the fallback branch
    assert torch.equal(teacher_by_confidence([peer]), peer)
    assert torch.equal(teacher_mean([peer]), peer)


# ------------------------------------------------------------------ the wire


def test_predictions_and_teacher_round_trip_through_the_wire():
    z, p = F.normalize(torch.randn(6, DIM), dim=-1), probs(6, 3, 0)
    digest = wire.batch_digest(range(6))
    content = wire.representation_to_records(
        z, round_id=2, digest=digest, predictions=p, label_space=SPACE_A
    )
    space, read = wire.predictions_from_records(content, rows=6, sender=5)
    assert space == SPACE_A and torch.allclose(read, p, atol=1e-6)
    plain = wire.representation_to_records(z, round_id=2, digest=digest)
    assert wire.predictions_from_records(plain, rows=6) is None

    payload = UserPayload((1, 2), torch.stack([z, z]), torch.zeros(1, 6, 6), teacher=p)
    records = wire.payload_to_records(payload, round_id=4)
    back = wire.payload_from_records(records, round_id=4, rows=6, dim=DIM)
    assert back.teacher is not None and torch.allclose(back.teacher, p, atol=1e-6)
    assert back.numel() == payload.numel()


def _predictions_reply(predictions: torch.Tensor, space: str | None = SPACE_A):
    z = F.normalize(torch.randn(6, DIM), dim=-1)
    content = wire.representation_to_records(z, round_id=2, digest=wire.batch_digest(range(6)))
    content["representation"]["predictions"] = Array(predictions.numpy())
    if space is not None:
        content["representation.meta"]["label-space"] = space
    return content


@pytest.mark.parametrize(
    ("predictions", "space", "match"),
    [
        (torch.randn(6, 3), SPACE_A, "class probabilities"),  # logits, not probabilities
        (probs(6, 3, 0), None, "come together"),
        (probs(6, 4, 0), SPACE_A, "does not name 4 classes"),
        (probs(5, 3, 0), SPACE_A, "expected \\(6, K\\)"),
        (torch.full((6, 3), float("nan")), SPACE_A, "NaN"),
        (torch.ones(6, 1), "1:x", "at least 2 classes"),
    ],
)
def test_malformed_predictions_are_refused_naming_the_field(predictions, space, match):
    with pytest.raises(wire.WireError, match=match) as err:
        wire.predictions_from_records(_predictions_reply(predictions, space), rows=6, sender=9)
    assert "representation/predictions" in str(err.value)


def test_a_teacher_that_is_not_probabilities_is_refused_on_the_client():
    z = F.normalize(torch.randn(6, DIM), dim=-1)
    payload = UserPayload((1, 2), torch.stack([z, z]), torch.zeros(1, 6, 6), teacher=probs(6, 3, 0))
    records = wire.payload_to_records(payload, round_id=4)
    records["muscle"]["teacher"] = Array((torch.randn(6, 3) * 5).numpy())
    with pytest.raises(wire.WireError, match="muscle/teacher"):
        wire.payload_from_records(records, round_id=4, rows=6, dim=DIM)


# ------------------------------------------------------------------ the strategy

SPACES = {11: SPACE_A, 12: SPACE_A, 13: SPACE_A, 14: SPACE_B, 15: None}


def distilling_reply(msg: Message, *, bad: bool = False) -> Message:
    """A client's reply with Z and, for a user of a label space, its class probabilities."""
    instruction = wire.instruction_from_records(msg.content, public_size=50, dim=DIM)
    node = msg.metadata.dst_node_id
    records = None
    if instruction.next_indices is not None:
        rows = len(instruction.next_indices)
        space = SPACES[node]
        records = wire.representation_to_records(
            representation(node, instruction.round_id, rows),
            round_id=instruction.round_id + 1,
            digest=wire.batch_digest(instruction.next_indices),
            predictions=None if space is None else probs(rows, 3, node),
            label_space=space or "",
        )
        if bad:
            records["representation"]["predictions"] = Array(torch.randn(rows, 3).numpy())
    user = {"user-id": f"user-{node}", "model": "m", "task": "t", "metric": "accuracy"}
    content = wire.reply_to_records(metrics={"accuracy": 0.5}, user=user, representation=records)
    return Message(content, reply_to=msg)


def second_round_payloads(distill_weight: float, bad: int | None = None, **overrides):
    """The strategy and each node's round-2 payload after a round of distilling replies."""
    run_config = config(distill_weight=distill_weight, **overrides)
    strategy = FedMuscleStrategy(run_config, device="cpu")
    grid = FakeGrid(SPACES)
    first = send(strategy, 1, grid)
    strategy.aggregate_train(1, [distilling_reply(m, bad=n == bad) for n, m in first.items()])
    payloads = {
        node: wire.instruction_from_records(msg.content, public_size=50, dim=DIM).payload
        for node, msg in send(strategy, 2, grid).items()
    }
    return strategy, payloads


def test_each_user_is_taught_by_the_mean_of_its_label_space_peers_only():
    strategy, payloads = second_round_payloads(1.0, distill_teacher="mean")
    for node, peers in {11: (12, 13), 12: (11, 13), 13: (11, 12)}.items():
        expected = teacher_mean([probs(4, 3, peer) for peer in peers])
        assert torch.allclose(payloads[node].teacher, expected, atol=1e-6)
    assert payloads[14].teacher is None  # alone in its label space
    assert payloads[15].teacher is None  # sends no predictions
    assert strategy.results.rounds[0].teachers == {
        "user-11": ["user-12", "user-13"],
        "user-12": ["user-11", "user-13"],
        "user-13": ["user-11", "user-12"],
    }


def test_distill_teacher_confidence_weights_the_same_peers_by_their_certainty():
    strategy, payloads = second_round_payloads(1.0)  # the default: distill-teacher = "confidence"
    assert strategy.config.distill_teacher == "confidence"
    for node, peers in {11: (12, 13), 12: (11, 13), 13: (11, 12)}.items():
        expected = teacher_by_confidence([probs(4, 3, peer) for peer in peers])
        assert torch.allclose(payloads[node].teacher, expected, atol=1e-6)
        assert not torch.allclose(expected, teacher_mean([probs(4, 3, p) for p in peers]))
    assert strategy.results.rounds[0].teachers["user-11"] == ["user-12", "user-13"]


def test_without_distill_weight_predictions_teach_no_one():
    strategy, payloads = second_round_payloads(0.0)
    assert all(payload.teacher is None for payload in payloads.values())
    assert strategy.results.rounds[0].teachers == {}


def test_bad_predictions_leave_only_their_sender_out_and_teach_no_one():
    strategy, payloads = second_round_payloads(1.0, bad=13)
    record = strategy.results.rounds[0]
    assert list(record.failed) == ["user-13"]
    assert "representation/predictions" in record.failed["user-13"]
    assert payloads.get(13) is None
    assert torch.allclose(payloads[11].teacher, probs(4, 3, 12), atol=1e-6)
    assert record.teachers["user-11"] == ["user-12"]


# ------------------------------------------------------------------ the trainer

TRAINER_CONFIG = RunConfig(
    federation=TINY_FEDERATION, public_size=64, public_batch_size=8, embed_dim=16, local_steps=2,
    batch_size=8, learning_rate=3e-3, gate="off", contrastive_steps=10, distill_weight=1.0,
    distill_presence=False, presence_teacher="classes",  # each test turns on what it tests
)  # fmt: skip
INDICES = list(range(8))


def tiny_trainer(user_id: str, **overrides):
    profile = next(u for u in load_federation(TINY_FEDERATION).users if u.id == user_id)
    return build_trainer(dataclasses.replace(TRAINER_CONFIG, **overrides), profile, TINY_FEDERATION)


def plain_payload(teacher: torch.Tensor | None) -> UserPayload:
    g = torch.Generator().manual_seed(3)
    others = F.normalize(torch.randn(2, 8, 16, generator=g), dim=-1)
    return UserPayload((1, 2), others, torch.zeros(1, 8, 8), teacher=teacher)


def test_contrastive_steps_with_a_teacher_move_the_users_predictions_to_it():
    trainer = tiny_trainer("cnn-cls", contrastive_steps=30)
    control = tiny_trainer("cnn-cls", contrastive_steps=30, distill_weight=0.0)
    assert trainer.label_space  # world image classes: a named label space
    _, before = trainer.represent_and_predict(INDICES)
    classes = trainer.model.num_classes
    teacher = F.one_hot(torch.arange(8) % classes, classes).float() * 0.9 + 0.1 / classes
    teacher = teacher / teacher.sum(-1, keepdim=True)

    def gap(p):
        return float((teacher * (teacher.log() - p.log())).sum(-1).mean())

    metrics = trainer.contrastive_update(INDICES, plain_payload(teacher))
    control.contrastive_update(INDICES, plain_payload(teacher))  # no distillation: ignored
    _, after = trainer.represent_and_predict(INDICES)
    control.model.eval()
    with torch.no_grad():
        logits = control.model.forward_task(control._batch(control.data.public, INDICES))
    unguided = class_probabilities(logits, temperature=2.0)
    assert metrics["distill-loss"] > 0
    assert gap(after) < gap(before) - 0.2
    assert gap(after) < gap(unguided) - 0.2


def test_with_certainty_row_weights_a_uniform_teacher_row_adds_nothing_to_the_loss():
    classes = tiny_trainer("cnn-cls").model.num_classes
    teacher = F.one_hot(torch.arange(8) % classes, classes).float() * 0.9 + 0.1 / classes
    teacher = teacher / teacher.sum(-1, keepdim=True)
    uniform = torch.full((8, classes), 1.0 / classes)

    def distill_loss(row_weight: str, rows: torch.Tensor) -> float:
        trainer = tiny_trainer(
            "cnn-cls", contrastive_steps=1, contrastive_weight=0.0, distill_row_weight=row_weight
        )
        return trainer.contrastive_update(INDICES, plain_payload(rows))["distill-loss"]

    assert distill_loss("uniform", uniform) > 0  # the student is not uniform
    assert distill_loss("certainty", uniform) == pytest.approx(0.0, abs=1e-7)
    mixed = torch.cat([teacher[:4], uniform[4:]])  # four sure rows, four that cannot tell
    assert distill_loss("certainty", mixed) < distill_loss("uniform", mixed)


def test_distillation_reaches_only_single_label_users_and_checks_the_classes():
    segmentation = tiny_trainer("segformer-seg")
    assert segmentation.label_space == ""
    z, predictions = segmentation.represent_and_predict(INDICES)
    assert predictions is None and z.shape == (8, 16)
    metrics = segmentation.contrastive_update(INDICES, plain_payload(probs(8, 3, 0)))
    assert "distill-loss" not in metrics  # a teacher sent to it is ignored

    text = tiny_trainer("bert-text")
    image = tiny_trainer("cnn-cls")
    assert text.label_space == image.label_space  # captions and images of the same classes
    wrong = probs(8, text.model.num_classes + 1, 0)
    with pytest.raises(ValueError, match="different label spaces"):
        text.contrastive_update(INDICES, plain_payload(wrong))
    assert tiny_trainer("cnn-cls", distill_weight=0.0).label_space == ""
    # the contrastive optimiser of these leaves the head out: they take no part
    assert tiny_trainer("cnn-cls", optimizer_state="separate").label_space == ""
    private = tiny_trainer("cnn-cls", dp=True, fallback="off")
    assert private.label_space == "" and private.represent_and_predict(INDICES)[1] is None


# ------------------------------------------------------------------ the config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"distill_weight": -1.0}, "distill-weight must be >= 0"),
        ({"distill_weight": float("nan")}, "distill-weight must be >= 0"),
        ({"distill_temperature": 0.0}, "distill-temperature must be a positive"),
        ({"distill_teacher": "median"}, "distill-teacher must be one of"),
        ({"distill_row_weight": "entropy"}, "distill-row-weight must be one of"),
    ],
)
def test_bad_distillation_settings_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**overrides)


def test_a_shut_gate_stops_distillation_unless_it_scales_lambda_alone():
    classes = tiny_trainer("cnn-cls").model.num_classes
    teacher = F.one_hot(torch.arange(8) % classes, classes).float() * 0.9 + 0.1 / classes
    teacher = teacher / teacher.sum(-1, keepdim=True)
    scaled = tiny_trainer("cnn-cls")
    scaled.gate_scale = 0.0  # every earlier update rejected
    assert scaled.contrastive_update(INDICES, plain_payload(teacher)) == {"lambda": 0.0}
    unscaled = tiny_trainer("cnn-cls", gate_scales_distill=False)
    unscaled.gate_scale = 0.0
    _, before = unscaled.represent_and_predict(INDICES)
    metrics = unscaled.contrastive_update(INDICES, plain_payload(teacher))
    _, after = unscaled.represent_and_predict(INDICES)
    assert metrics["lambda"] == 0.0 and metrics["distill-loss"] > 0
    assert not torch.allclose(before, after)  # the teacher still pulled
