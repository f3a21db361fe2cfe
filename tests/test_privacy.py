"""DP-SGD for each user's supervised steps (Opacus): every built-in model type trains
privately, the accountant counts every private step, the budget is never passed."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from client_app.app import build_trainer
from fedmuscle_flwr.aggregation import build_payloads
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.privacy import PrivacyBudgetSpent
from tests.tiny import TINY_FEDERATION

CONFIG = RunConfig(
    federation=TINY_FEDERATION, public_size=64, public_batch_size=8, embed_dim=16,
    local_steps=3, batch_size=8, num_server_rounds=4, gate="paired", dp=True, dp_epsilon=3.0,
)  # fmt: skip
USERS = load_federation(TINY_FEDERATION).users


def _payload():
    g = torch.Generator().manual_seed(0)
    reps = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(4)}
    return build_payloads(reps, num_partners=3, tau_alpha=0.5, generator=g, device="cpu")[0]


@pytest.mark.parametrize("profile", USERS, ids=[u.model for u in USERS])
def test_every_model_type_trains_privately_and_spends_epsilon(profile):
    trainer = build_trainer(CONFIG, profile, TINY_FEDERATION)
    assert trainer.private is not None and trainer.private.noise_multiplier > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.model.modules())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    spent = []
    for _ in range(2):
        with trainer.random_state():
            metrics = trainer.train_round(list(range(8)), _payload())
        spent.append(trainer.privacy_spent()["dp-epsilon"])
        assert math.isfinite(metrics["train-loss"])
    assert 0 < spent[0] < spent[1] <= CONFIG.dp_epsilon
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the private steps moved the model
    # Two branches of the paired gate per round: both count.
    assert sum(steps for _, _, steps in trainer.private.accountant.history) == 2 * 2 * 3


def test_the_planned_run_ends_at_the_target_and_one_more_round_is_refused():
    trainer = build_trainer(dataclasses.replace(CONFIG, gate="off"), USERS[0], TINY_FEDERATION)
    for _ in range(CONFIG.num_server_rounds):
        with trainer.random_state():
            trainer.train_round(None, None)
    spent = trainer.privacy_spent()["dp-epsilon"]
    assert CONFIG.dp_epsilon * 0.9 < spent <= CONFIG.dp_epsilon * (1 + 1e-6)
    with pytest.raises(PrivacyBudgetSpent, match=r"past dp-epsilon=3\.0"):
        trainer.train_round(None, None)
    assert trainer.privacy_spent()["dp-epsilon"] == spent  # refused before any step


def test_clipping_bounds_each_examples_influence():
    """With no noise (epsilon inf) an update is the mean of clipped per-example gradients."""
    config = dataclasses.replace(CONFIG, dp_epsilon=math.inf, dp_max_grad_norm=1e-4,
                                 local_steps=1, gate="off")  # fmt: skip
    trainer = build_trainer(config, USERS[0], TINY_FEDERATION)
    assert trainer.private is not None and trainer.private.noise_multiplier == 0
    with trainer.random_state():
        trainer.supervised_update()
    grads = [p.grad for p in trainer.private.task_parameters if p.grad is not None]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    assert float(norm) <= 1e-4 * (1 + 1e-3)


def test_private_state_survives_a_restore(tmp_path):
    from client_app.state import StateStore

    trainer = build_trainer(CONFIG, USERS[1], TINY_FEDERATION)
    with trainer.random_state():
        trainer.train_round(None, None)
    store = StateStore(tmp_path, "exp", USERS[1].id)
    store.save(trainer, 1)
    restored = build_trainer(CONFIG, USERS[1], TINY_FEDERATION)
    restored.load_state_dict(torch.load(store.path(1), weights_only=True))
    assert restored.privacy_spent() == trainer.privacy_spent()


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [("dp_epsilon", 0.0, "dp-epsilon"), ("dp_delta", 1.0, "dp-delta"),
     ("dp_max_grad_norm", -1.0, "dp-max-grad-norm")],
)  # fmt: skip
def test_bad_privacy_settings_are_refused(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig(**{key: value})


def test_the_paired_gates_two_branches_get_fresh_noise():
    """Replaying a round (the paired gate) rewinds the batch order, never the noise."""
    trainer = build_trainer(CONFIG, USERS[0], TINY_FEDERATION)
    assert trainer.private is not None
    start = trainer._snapshot(full=True)
    noise = trainer.private.noise_generator.get_state()
    with trainer.random_state():
        trainer.supervised_update()
    trainer._restore(start)
    assert not torch.equal(trainer.private.noise_generator.get_state(), noise)
    assert torch.equal(trainer.generator.get_state(), start["generator"])


def test_projection_steps_spend_no_privacy_budget():
    """``projection-steps`` run on the public batch: the projection moves, epsilon does not."""
    spent, projections = {}, {}
    for steps in (0, 5):
        config = dataclasses.replace(CONFIG, gate="off", projection_steps=steps)
        trainer = build_trainer(config, USERS[0], TINY_FEDERATION)
        with trainer.random_state():
            trainer.train_round(list(range(8)), _payload())
        assert trainer.private is not None
        assert sum(n for _, _, n in trainer.private.accountant.history) == CONFIG.local_steps
        spent[steps] = trainer.privacy_spent()["dp-epsilon"]
        projections[steps] = trainer.model.state_for_checkpoint()
        assert (trainer.projection_optimizer is not None) == (steps > 0)
    assert spent[5] == spent[0] > 0
    moved = [n for n, v in projections[5].items() if not torch.equal(v, projections[0][n])]
    assert moved and any(n.startswith("projection.") for n in moved)
