"""Multi-label users learning presence from single-label peers (``distill-presence``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flwr.app import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_flwr import wire
from fedmuscle_flwr.data.sources import get_data_source
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.loss import label_space_key, presence_loss, teacher_by_confidence
from server_app.strategy import FedMuscleStrategy
from tests.test_distillation import INDICES, SPACE_A, plain_payload, probs, tiny_trainer
from tests.test_strategy import DIM, FakeGrid, config, representation, send

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def bound_at_t1(teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    sharpened = teacher**temperature
    return sharpened / sharpened.sum(-1, keepdim=True)


# ------------------------------------------------------------------ the loss


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    classes=st.integers(2, 7),
    temperature=st.sampled_from([1.0, 2.0, 4.0]),
    seed=st.integers(0, 10_000),
)
def test_presence_gradient_is_min_of_sigmoid_minus_bound_and_zero(rows, classes, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=g) * 3).requires_grad_(True)
    teacher = probs(rows, classes, seed)
    loss = presence_loss(logits, teacher, temperature=temperature)
    loss.backward()
    bound = bound_at_t1(teacher, temperature)
    expected = torch.clamp(torch.sigmoid(logits.detach()) - bound, max=0.0) / rows
    assert loss >= -1e-6
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_presence_loss_is_zero_where_the_student_is_above_the_bound_and_kl_below():
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    above = torch.tensor([[3.0, 2.0, 0.0]])  # sigmoids 0.95, 0.88, 0.5: all above the bound
    assert presence_loss(above, teacher, temperature=1.0) == pytest.approx(0.0, abs=1e-6)
    below = torch.tensor([[-2.0, 2.0, 0.0]])  # only the first class is below its bound 0.7
    q = torch.sigmoid(torch.tensor(-2.0))
    kl = 0.7 * torch.log(0.7 / q) + 0.3 * torch.log(0.3 / (1 - q))
    assert presence_loss(below, teacher, temperature=1.0) == pytest.approx(float(kl), rel=1e-5)


def test_a_lone_teachers_temperature_is_undone_and_bad_shapes_are_refused():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    tempered = F.softmax(logits / 2.0, dim=-1)
    assert torch.allclose(bound_at_t1(tempered, 2.0), F.softmax(logits, dim=-1), atol=1e-6)
    student = torch.full((1, 3), -10.0, requires_grad=True)
    presence_loss(student, tempered, temperature=2.0).backward()
    # far below every bound: the gradient is -(bound at T = 1)
    assert torch.allclose(student.grad, -F.softmax(logits, dim=-1), atol=1e-4)
    with pytest.raises(ValueError, match="must both be \\(B, K\\)"):
        presence_loss(torch.zeros(2, 3), torch.zeros(2, 4), temperature=1.0)
    with pytest.raises(ValueError, match="one per row"):
        presence_loss(torch.zeros(2, 3), probs(2, 3, 0), temperature=1.0, row_weights=torch.ones(3))


# ------------------------------------------------------------------ data and wire


def test_the_world_and_real_sources_name_their_multi_label_outputs():
    federation = load_federation("default")
    world = get_data_source("world")
    names = world.class_names(federation, "multi-label-classification")
    assert names == world.class_names(federation, "image-classification")  # the same kinds
    assert len(names) == world.num_classes(federation, "multi-label-classification")
    real = load_federation("real")
    source = get_data_source("real")
    real_names = source.class_names(real, "multi-label-classification")
    assert len(real_names) == source.num_classes(real, "multi-label-classification")


def test_a_teacher_request_round_trips_and_malformed_ones_are_refused():
    z = F.normalize(torch.randn(6, DIM), dim=-1)
    digest = wire.batch_digest(range(6))
    content = wire.representation_to_records(z, round_id=2, digest=digest, teacher_space=SPACE_A)
    assert wire.teacher_request_from_records(content, sender=3) == SPACE_A
    assert wire.predictions_from_records(content, rows=6) is None  # it sends no predictions
    plain = wire.representation_to_records(z, round_id=2, digest=digest)
    assert wire.teacher_request_from_records(plain) is None
    with pytest.raises(ValueError, match="takes its teacher in its label_space"):
        wire.representation_to_records(
            z, round_id=2, digest=digest, predictions=probs(6, 3, 0), label_space=SPACE_A,
            teacher_space=SPACE_A,
        )  # fmt: skip
    for bad in ("", "x:abc", "1:abc", "3:", 7):
        content["representation.meta"]["teacher-space"] = bad
        with pytest.raises(wire.WireError, match="teacher-space") as err:
            wire.teacher_request_from_records(content, sender=3)
        assert "from node 3" in str(err.value)


# ------------------------------------------------------------------ the strategy

# 11, 12: single-label users of SPACE_A; 13: a multi-label user asking for SPACE_A; 14: asks
# for a space no one predicts in
REQUESTS = {13: SPACE_A, 14: "3:ffffffffffffffff"}


def presence_reply(msg: Message) -> Message:
    instruction = wire.instruction_from_records(msg.content, public_size=50, dim=DIM)
    node = msg.metadata.dst_node_id
    records = None
    if instruction.next_indices is not None:
        rows = len(instruction.next_indices)
        records = wire.representation_to_records(
            representation(node, instruction.round_id, rows),
            round_id=instruction.round_id + 1,
            digest=wire.batch_digest(instruction.next_indices),
            predictions=None if node in REQUESTS else probs(rows, 3, node),
            label_space="" if node in REQUESTS else SPACE_A,
            teacher_space=REQUESTS.get(node, ""),
        )
    user = {"user-id": f"user-{node}", "model": "m", "task": "t", "metric": "accuracy"}
    content = wire.reply_to_records(metrics={"accuracy": 0.5}, user=user, representation=records)
    return Message(content, reply_to=msg)


def test_a_requesting_user_learns_from_every_peer_of_its_space_and_teaches_no_one():
    strategy = FedMuscleStrategy(config(distill_weight=1.0), device="cpu")
    grid = FakeGrid([11, 12, 13, 14])
    first = send(strategy, 1, grid)
    strategy.aggregate_train(1, [presence_reply(m) for m in first.values()])
    payloads = {
        node: wire.instruction_from_records(msg.content, public_size=50, dim=DIM).payload
        for node, msg in send(strategy, 2, grid).items()
    }
    expected = teacher_by_confidence([probs(4, 3, 11), probs(4, 3, 12)])
    assert torch.allclose(payloads[13].teacher, expected, atol=1e-6)
    assert torch.allclose(payloads[11].teacher, probs(4, 3, 12), atol=1e-6)  # not taught by 13
    assert payloads[14].teacher is None  # no one predicts in its space
    assert strategy.results.rounds[0].teachers == {
        "user-11": ["user-12"],
        "user-12": ["user-11"],
        "user-13": ["user-11", "user-12"],
    }


# ------------------------------------------------------------------ the trainer


def test_a_multi_label_user_asks_for_a_teacher_only_with_distill_presence():
    user = tiny_trainer("vit-multilabel", distill_presence=True)
    classifier = tiny_trainer("cnn-cls", distill_presence=True)
    assert user.label_space == ""  # it sends no predictions
    assert user.teacher_space == classifier.label_space  # the same kinds, by name
    assert user.represent_and_predict(INDICES)[1] is None
    assert tiny_trainer("vit-multilabel").teacher_space == ""  # off
    unweighted = tiny_trainer("vit-multilabel", distill_presence=True, distill_weight=0.0)
    assert unweighted.teacher_space == ""
    assert tiny_trainer("segformer-seg", distill_presence=True).teacher_space == ""
    names = user.data.output_space
    assert user.teacher_space == label_space_key(names)


def test_presence_steps_raise_the_teachers_class_where_the_user_was_below_it():
    user = tiny_trainer("vit-multilabel", distill_presence=True, contrastive_steps=30)
    classes = user.model.num_classes
    target = torch.arange(8) % classes
    teacher = F.one_hot(target, classes).float() * 0.9 + 0.1 / classes
    teacher = teacher / teacher.sum(-1, keepdim=True)

    def presence_of_target() -> float:
        user.model.eval()
        with torch.no_grad():
            logits = user.model.forward_task(user._batch(user.data.public, INDICES))
        return float(torch.sigmoid(logits).gather(1, target[:, None]).mean())

    before = presence_of_target()
    metrics = user.contrastive_update(INDICES, plain_payload(teacher))
    assert metrics["distill-loss"] > 0
    assert presence_of_target() > before + 0.1
    with pytest.raises(ValueError, match="different label spaces"):
        user.contrastive_update(INDICES, plain_payload(probs(8, classes + 1, 0)))
