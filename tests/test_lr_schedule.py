"""lr-schedule: a user's learning rate over the run, the same for every algorithm."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client_app.app import build_trainer
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.federation import load_federation
from tests.test_training import CONFIG, INDICES, partners_payload
from tests.tiny import TINY_FEDERATION


def test_constant_keeps_the_rate_and_cosine_decays_from_one_to_near_the_final_share():
    assert {RunConfig(num_server_rounds=5).lr_scale_at(r) for r in range(1, 9)} == {1.0}
    cosine = RunConfig(num_server_rounds=4, lr_schedule="cosine", lr_final_share=0.2)
    scales = [cosine.lr_scale_at(r) for r in range(1, 7)]
    # f + (1 - f) (1 + cos(pi (t - 1) / 4)) / 2, and f itself past the last round
    assert scales == pytest.approx([1.0, 0.2 + 0.8 * 0.853553, 0.6, 0.2 + 0.8 * 0.146447, 0.2, 0.2])
    assert cosine.lr_scale_at(4) > 0.2  # the last round still takes steps


@settings(max_examples=60, deadline=None)
@given(rounds=st.integers(1, 300), final=st.floats(0, 1))
def test_cosine_scale_falls_monotonically_between_one_and_the_final_share(rounds, final):
    config = RunConfig(num_server_rounds=rounds, lr_schedule="cosine", lr_final_share=final)
    scales = [config.lr_scale_at(r) for r in range(1, rounds + 2)]
    assert scales[0] == pytest.approx(1.0)
    assert all(final - 1e-12 <= s <= 1 + 1e-12 for s in scales)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(scales))


@pytest.mark.parametrize(
    ("key", "value"), [("lr_schedule", "linear"), ("lr_final_share", -0.1), ("lr_final_share", 1.5)]
)
def test_bad_schedule_values_are_refused_with_the_key_named(key, value):
    with pytest.raises(ConfigError, match=key.replace("_", "-")):
        RunConfig(**{key: value})


def test_a_round_steps_at_its_scaled_rate_and_the_fallback_alike():
    config = dataclasses.replace(CONFIG, fallback="local", validation_fraction=0.25)
    profile = load_federation(TINY_FEDERATION).users[0]
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    assert trainer.fallback is not None
    with trainer.random_state():
        trainer.train_round(INDICES, partners_payload(), weight=1.0, lr_scale=0.25)
    for optimizer in (trainer.optimizer, trainer.fallback.optimizer):
        assert {g["lr"] for g in optimizer.param_groups} == {0.25 * config.learning_rate}


def test_a_round_at_scale_zero_leaves_the_weights_where_they_were():
    profile = load_federation(TINY_FEDERATION).users[0]
    trainer = build_trainer(CONFIG, profile, TINY_FEDERATION)
    before = {n: t.detach().clone() for n, t in trainer.model.named_parameters()}
    with trainer.random_state():
        trainer.train_round(INDICES, partners_payload(), weight=1.0, lr_scale=0.0)
    for name, weight in trainer.model.named_parameters():
        assert torch.equal(weight, before[name]), name
    with trainer.random_state():
        trainer.train_round(INDICES, partners_payload(), weight=1.0, lr_scale=1.0)
    assert any(not torch.equal(w, before[n]) for n, w in trainer.model.named_parameters())


def test_separate_contrastive_optimiser_follows_the_schedule_times_lambda():
    config = dataclasses.replace(CONFIG, optimizer_state="separate")
    profile = load_federation(TINY_FEDERATION).users[0]
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    with trainer.random_state():
        trainer.train_round(INDICES, partners_payload(), weight=0.5, lr_scale=0.5)
    assert trainer.contrastive_optimizer is not None
    rates = [g["lr"] for g in trainer.contrastive_optimizer.param_groups]
    assert rates == pytest.approx([config.learning_rate * 0.5 * 0.5] * len(rates))
