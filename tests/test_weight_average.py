"""weight-average = "ema": each user scores an average of its weights over rounds."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from client_app.app import build_trainer
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.federation import load_federation
from tests.test_training import CONFIG, INDICES, partners_payload
from tests.tiny import TINY_FEDERATION

EMA = dataclasses.replace(CONFIG, weight_average="ema", weight_average_decay=0.6)


def _trained(trainer, rounds: int) -> list[dict[str, torch.Tensor]]:
    """Train ``rounds`` rounds; return the tensors an average follows after each."""
    seen = []
    for _ in range(rounds):
        with trainer.random_state():
            trainer.train_round(INDICES, partners_payload(), weight=1.0)
        seen.append({n: t.detach().clone() for n, t in trainer._averaged_tensors().items()})
    return seen


def test_the_average_is_the_decayed_sum_of_each_rounds_weights():
    profile = load_federation(TINY_FEDERATION).users[0]
    trainer = build_trainer(EMA, profile, TINY_FEDERATION)
    seen = _trained(trainer, 3)
    assert trainer.averaged is not None and set(trainer.averaged) == set(seen[0])
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable <= set(trainer.averaged)
    for name, average in trainer.averaged.items():
        w1, w2, w3 = (s[name] for s in seen)
        expected = 0.6 * (0.6 * w1 + 0.4 * w2) + 0.4 * w3
        torch.testing.assert_close(average, expected)
    assert any(not torch.equal(trainer.averaged[n], seen[-1][n]) for n in seen[-1])


def test_training_never_sees_the_average_and_the_weights_come_back():
    profile = load_federation(TINY_FEDERATION).users[0]
    plain = build_trainer(CONFIG, profile, TINY_FEDERATION)
    averaged = build_trainer(EMA, profile, TINY_FEDERATION)
    for trainer in (plain, averaged):
        _trained(trainer, 2)
        trainer.evaluate()
        _trained(trainer, 1)
    assert plain.averaged is None
    for (name, a), b in zip(
        plain.model.state_dict().items(), averaged.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # same steps: evaluation changed nothing of training
    assert torch.equal(plain.represent(INDICES), averaged.represent(INDICES))


def test_evaluate_scores_the_averaged_weights():
    profile = load_federation(TINY_FEDERATION).users[0]
    trainer = build_trainer(dataclasses.replace(EMA, fallback="off"), profile, TINY_FEDERATION)
    _trained(trainer, 3)
    own = trainer._metrics()
    reported = trainer.evaluate()
    with trainer.averaged_weights():
        assert trainer._metrics() == reported
    assert trainer._metrics() == own  # the own weights are back
    probe = {n: t.clone() for n, t in trainer._averaged_tensors().items()}
    with trainer.averaged_weights():
        moved = trainer._averaged_tensors()
        assert all(torch.equal(moved[n], trainer.averaged[n]) for n in probe)
    assert all(torch.equal(t, probe[n]) for n, t in trainer._averaged_tensors().items())


def test_the_fallback_compares_the_two_averages_and_the_state_keeps_them():
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(EMA, validation_fraction=0.3)
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    assert trainer.fallback is not None
    _trained(trainer, 2)
    assert trainer.fallback.averaged is not None  # the user alone averages its own weights
    metrics = trainer.evaluate()
    with trainer.averaged_weights():
        joined = trainer._metrics()
    assert metrics["joined-accuracy"] == joined["accuracy"]

    buffer = io.BytesIO()  # through bytes, as the client's state store keeps it
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    restored = build_trainer(config, profile, TINY_FEDERATION)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for user in (trainer, restored):
        _trained(user, 1)
    assert restored.evaluate() == trainer.evaluate()
    for name, average in trainer.averaged.items():
        assert torch.equal(restored.averaged[name], average)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"weight_average": "swa"}, "weight-average must be one of"),
        ({"weight_average_decay": 1.0}, "weight-average-decay must be in [0, 1)"),
        ({"weight_average_decay": -0.1}, "weight-average-decay must be in [0, 1)"),
    ],
)
def test_bad_weight_average_settings_are_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        RunConfig(**overrides)


def test_a_private_user_scores_its_average_and_spends_nothing_more_for_it():
    """With DP-SGD the average is post-processing: the same steps, the same epsilon."""
    from tests.test_privacy import CONFIG as PRIVATE

    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(PRIVATE, gate="off")
    plain = build_trainer(config, profile, TINY_FEDERATION)
    averaged = build_trainer(
        dataclasses.replace(config, weight_average="ema"), profile, TINY_FEDERATION
    )
    for trainer in (plain, averaged):
        for _ in range(2):
            with trainer.random_state():
                trainer.train_round(None, None)
    assert averaged.privacy_spent() == plain.privacy_spent()
    assert averaged.averaged is not None and averaged.averaged.keys() == set(
        averaged._averaged_tensors()
    )
    with averaged.averaged_weights():
        expected = averaged._metrics()
    assert averaged.evaluate() == expected
