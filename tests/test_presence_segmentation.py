"""Segmentation users teaching multi-label users presence (``presence-teacher``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from flwr.app import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_flwr import wire
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.loss import image_presence, presence_distillation_loss, teacher_by_confidence
from fedmuscle_flwr.payload import UserPayload
from server_app.checkpoint import payloads_by_node, payloads_by_user
from server_app.strategy import FedMuscleStrategy
from tests.test_distillation import INDICES, SPACE_A, plain_payload, probs, tiny_trainer
from tests.test_strategy import DIM, FakeGrid, config, representation, send

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def presence(rows: int, classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, classes, generator=g)


# ------------------------------------------------------------------ the loss


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), classes=st.integers(2, 7), seed=st.integers(0, 10_000))
def test_presence_distillation_gradient_is_sigmoid_minus_the_teacher(rows, classes, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=g) * 3).requires_grad_(True)
    teacher = presence(rows, classes, seed + 1)
    loss = presence_distillation_loss(logits, teacher)
    loss.backward()
    assert loss >= -1e-6
    expected = (torch.sigmoid(logits.detach()) - teacher) / rows
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_presence_distillation_is_zero_only_at_the_teacher_and_refuses_bad_shapes():
    teacher = torch.tensor([[0.9, 0.2, 0.5]])
    at = torch.logit(teacher)
    assert presence_distillation_loss(at, teacher) == pytest.approx(0.0, abs=1e-6)
    assert presence_distillation_loss(at + 0.5, teacher) > 1e-3  # above the teacher: pulled down
    with pytest.raises(ValueError, match="must both be \\(B, K\\)"):
        presence_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_image_presence_is_each_classs_largest_pixel_probability_without_background():
    logits = torch.full((2, 4, 3, 3), -10.0)
    logits[:, 0] = 10.0  # background everywhere ...
    logits[0, 2, 1, 1] = 20.0  # ... but class 2 at one pixel of image 0
    out = image_presence(logits)
    assert out.shape == (2, 3)  # background left out
    expected = float(torch.softmax(torch.tensor([10.0, -10.0, 20.0, -10.0]), 0)[2])
    assert out[0, 1] == pytest.approx(expected, abs=1e-6)  # class 2 is output column 1
    assert out[0, 0] < 1e-6 and out[1].max() < 1e-6
    for bad in (torch.zeros(2, 4), torch.zeros(2, 2, 3, 3)):
        with pytest.raises(ValueError, match="background and K >= 2"):
            image_presence(bad)


# ------------------------------------------------------------------ the wire


def test_presence_predictions_and_a_presence_teacher_round_trip_and_bad_ones_are_refused():
    z = F.normalize(torch.randn(6, DIM), dim=-1)
    digest = wire.batch_digest(range(6))
    sent = presence(6, 3, 0)  # rows do not sum to 1: not class probabilities
    content = wire.representation_to_records(
        z, round_id=2, digest=digest, predictions=sent, label_space=SPACE_A, presence=True
    )
    space, read = wire.predictions_from_records(content, rows=6, sender=4)
    assert space == wire.presence_space(SPACE_A) != SPACE_A
    assert torch.allclose(read, sent, atol=1e-6)
    content["representation"]["predictions"] = wire.Array((sent * 3).numpy())
    with pytest.raises(wire.WireError, match="must lie in \\[0, 1\\]"):
        wire.predictions_from_records(content, rows=6, sender=4)
    content["representation.meta"]["prediction-kind"] = "logits"
    with pytest.raises(wire.WireError, match="prediction-kind"):
        wire.predictions_from_records(content, rows=6, sender=4)

    payload = replace(plain_payload(presence(8, 3, 1)), teacher_kind="presence")
    records = wire.payload_to_records(payload, round_id=3)
    back = wire.payload_from_records(records, round_id=3, rows=8, dim=16)
    assert back.teacher_kind == "presence"
    assert torch.allclose(back.teacher, payload.teacher, atol=1e-6)
    records[f"{wire.PAYLOAD_KEY}.meta"]["teacher-kind"] = "classes"  # now it must sum to 1
    with pytest.raises(wire.WireError, match="summing to 1"):
        wire.payload_from_records(records, round_id=3, rows=8, dim=16)
    records[f"{wire.PAYLOAD_KEY}.meta"]["teacher-kind"] = "guess"
    with pytest.raises(wire.WireError, match="teacher-kind"):
        wire.payload_from_records(records, round_id=3, rows=8, dim=16)


def test_a_checkpoint_keeps_the_teachers_kind():
    payload = replace(plain_payload(presence(8, 3, 0)), teacher_kind="presence")
    saved = payloads_by_user({7: payload}, {7: "u7", 1: "u1", 2: "u2"}.__getitem__)
    restored, _ = payloads_by_node(saved, {"u7": 70, "u1": 10, "u2": 20})
    assert restored[70].teacher_kind == "presence"
    assert torch.equal(restored[70].teacher, payload.teacher)


# ------------------------------------------------------------------ the strategy

# 11, 12: single-label users of SPACE_A; 13: a multi-label user asking for SPACE_A;
# 15, 16: segmentation users sending presence of SPACE_A's classes
CLASSES, REQUESTERS, SEGMENTERS = (11, 12), (13,), (15, 16)


def reply(msg: Message, segmenters: tuple[int, ...]) -> Message:
    instruction = wire.instruction_from_records(msg.content, public_size=50, dim=DIM)
    node = msg.metadata.dst_node_id
    records = None
    if instruction.next_indices is not None:
        rows = len(instruction.next_indices)
        predictions = None
        if node in CLASSES:
            predictions = probs(rows, 3, node)
        elif node in segmenters:
            predictions = presence(rows, 3, node)
        records = wire.representation_to_records(
            representation(node, instruction.round_id, rows),
            round_id=instruction.round_id + 1,
            digest=wire.batch_digest(instruction.next_indices),
            predictions=predictions,
            label_space=SPACE_A if predictions is not None else "",
            teacher_space=SPACE_A if node in REQUESTERS else "",
            presence=node in segmenters,
        )
    user = {"user-id": f"user-{node}", "model": "m", "task": "t", "metric": "accuracy"}
    content = wire.reply_to_records(metrics={"accuracy": 0.5}, user=user, representation=records)
    return Message(content, reply_to=msg)


def second_round(
    nodes: list[int], segmenters: tuple[int, ...]
) -> tuple[dict[int, UserPayload], dict[str, list[str]]]:
    """The round-2 payloads by node, and who taught whom in round 1."""
    strategy = FedMuscleStrategy(config(distill_weight=1.0), device="cpu")
    grid = FakeGrid(nodes)
    first = send(strategy, 1, grid)
    strategy.aggregate_train(1, [reply(m, segmenters) for m in first.values()])
    payloads = {
        node: wire.instruction_from_records(msg.content, public_size=50, dim=DIM).payload
        for node, msg in send(strategy, 2, grid).items()
    }
    return payloads, strategy.results.rounds[0].teachers


def test_segmentation_peers_teach_a_requester_their_mean_presence_and_no_one_else():
    payloads, teachers = second_round([11, 12, 13, 15, 16], SEGMENTERS)
    mean_presence = (presence(4, 3, 15) + presence(4, 3, 16)) / 2
    assert payloads[13].teacher_kind == "presence"
    assert torch.allclose(payloads[13].teacher, mean_presence, atol=1e-6)
    # the single-label users learn only from each other, the segmenters from no one
    assert payloads[11].teacher_kind == "classes"
    assert torch.allclose(payloads[11].teacher, probs(4, 3, 12), atol=1e-6)
    assert payloads[15].teacher is None and payloads[16].teacher is None
    assert teachers["user-13"] == ["user-15", "user-16"]


def test_without_a_segmentation_peer_the_requester_takes_the_classes_as_before():
    payloads, _ = second_round([11, 12, 13], ())
    assert payloads[13].teacher_kind == "classes"
    expected = teacher_by_confidence([probs(4, 3, 11), probs(4, 3, 12)])
    assert torch.allclose(payloads[13].teacher, expected, atol=1e-6)


# ------------------------------------------------------------------ the trainer


def test_a_segmentation_user_sends_presence_only_with_presence_teacher_segmentation():
    options = {"distill_presence": True, "presence_teacher": "segmentation"}
    seg = tiny_trainer("segformer-seg", **options)
    multi = tiny_trainer("vit-multilabel", **options)
    assert seg.presence_space == multi.teacher_space != ""  # its kinds, background left out
    assert seg.label_space == "" and seg.teacher_space == ""
    _, sent = seg.represent_and_predict(INDICES)
    assert sent.shape == (len(INDICES), multi.model.num_classes)
    assert float(sent.min()) >= 0.0 and float(sent.max()) <= 1.0
    assert tiny_trainer("segformer-seg", distill_presence=True).presence_space == ""  # classes
    assert tiny_trainer("segformer-seg", presence_teacher="segmentation").presence_space == ""
    assert tiny_trainer("cnn-cls", **options).presence_space == ""  # not a dense task


def test_presence_steps_pull_each_sigmoid_towards_the_segmenters_presence_both_ways():
    user = tiny_trainer(
        "vit-multilabel", distill_presence=True, presence_teacher="segmentation",
        contrastive_steps=30,
    )  # fmt: skip
    classes = user.model.num_classes
    target = (torch.arange(classes) % 2).expand(8, classes)  # every other class present
    teacher = target.float() * 0.9 + 0.05

    def sigmoids() -> torch.Tensor:
        user.model.eval()
        with torch.no_grad():
            return torch.sigmoid(user.model.forward_task(user._batch(user.data.public, INDICES)))

    before = sigmoids()
    payload = replace(plain_payload(teacher), teacher_kind="presence")
    metrics = user.contrastive_update(INDICES, payload)
    after = sigmoids()
    assert metrics["distill-loss"] > 0
    present, absent = target.bool(), ~target.bool()
    assert after[present].mean() > before[present].mean() + 0.05  # pulled up
    assert after[absent].mean() < before[absent].mean() - 0.05  # and down: not a bound
    assert (after - teacher).abs().mean() < (before - teacher).abs().mean() - 0.05


def test_an_unknown_presence_teacher_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"presence.teacher.*classes.*segmentation"):
        RunConfig(presence_teacher="pixels")
