"""The mechanisms that make collaboration pay: relevance-aware partners, the validation gate,
warm-up and lambda ramp, frozen norm statistics, separate optimiser state, data splits."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from client_app.app import build_trainer
from fedmuscle_flwr.aggregation import (
    build_payloads,
    linear_cka,
    select_partners,
    select_relevant_partners,
)
from fedmuscle_flwr.algorithms import get_algorithm
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.data.users import load_user_data
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.tasks import get_task
from fedmuscle_flwr.training import gate_decision
from tests.tiny import TINY_FEDERATION

CONFIG = RunConfig(
    federation=TINY_FEDERATION, public_size=64, public_batch_size=8, embed_dim=16, local_steps=2,
    batch_size=8, learning_rate=3e-3, gate="off",
)  # fmt: skip
INDICES = list(range(8))


def unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def grams(zs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([z @ z.T for z in zs])


# ---------------------------------------------------------------- linear CKA


def test_cka_is_one_on_itself_and_invariant_to_rotations():
    g = torch.Generator().manual_seed(0)
    z = unit(g, 16, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    noise = unit(g, 16, 8)
    cka = linear_cka(grams([z, z @ rotation, noise]))
    assert torch.allclose(cka, cka.T)
    assert torch.allclose(cka.diagonal(), torch.ones(3, dtype=cka.dtype))
    assert cka[0, 1] == pytest.approx(1.0, abs=1e-9)
    assert cka[0, 2] < 0.9


def test_cka_of_a_constant_representation_is_zero():
    g = torch.Generator().manual_seed(1)
    constant = F.normalize(torch.ones(16, 8, dtype=torch.float64), dim=-1)
    cka = linear_cka(grams([unit(g, 16, 8), constant]))
    assert cka[0, 1] == 0.0 and cka[1, 0] == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), users=st.integers(2, 6))
def test_cka_lies_in_zero_one(seed, users):
    g = torch.Generator().manual_seed(seed)
    cka = linear_cka(grams([unit(g, 12, 6) for _ in range(users)]))
    assert bool(((cka >= 0) & (cka <= 1)).all())


# ---------------------------------------------------------------- relevance ranking


def test_relevance_without_exploration_picks_the_most_similar():
    similarity = torch.tensor(
        [
            [1.0, 0.9, 0.1, 0.5],
            [0.9, 1.0, 0.2, 0.3],
            [0.1, 0.2, 1.0, 0.8],
            [0.5, 0.3, 0.8, 1.0],
        ]
    )
    picks = select_relevant_partners(
        [10, 11, 12, 13], similarity, 2, torch.Generator().manual_seed(0), exploration=0.0
    )
    assert picks == {10: (11, 13), 11: (10, 13), 12: (13, 11), 13: (12, 10)}


def test_relevance_ties_go_to_the_lower_node_id():
    picks = select_relevant_partners(
        [5, 7, 9], torch.ones(3, 3), 1, torch.Generator().manual_seed(0), exploration=0.0
    )
    assert picks == {5: (7,), 7: (5,), 9: (5,)}


def test_relevance_is_deterministic_under_the_seed_and_explores():
    g = torch.Generator().manual_seed(3)
    similarity = linear_cka(grams([unit(g, 8, 4) for _ in range(8)]))
    nodes = list(range(8))

    def run(seed: int, exploration: float):
        return select_relevant_partners(
            nodes, similarity, 3, torch.Generator().manual_seed(seed), exploration=exploration
        )

    assert run(1, 0.5) == run(1, 0.5)
    greedy = run(1, 0.0)
    explored = [run(seed, 0.5) for seed in range(10)]
    assert any(e != greedy for e in explored)
    for picks in [greedy, *explored]:
        for node, partners in picks.items():
            assert node not in partners and len(set(partners)) == 3


def test_relevance_keeps_a_noise_user_out_of_honest_users_partners():
    g = torch.Generator().manual_seed(4)
    latent = unit(g, 32, 16)
    honest = [F.normalize(latent + 0.3 * unit(g, 32, 16), dim=-1).float() for _ in range(3)]
    noise = unit(g, 32, 16).float()
    reps = {1: honest[0], 2: honest[1], 3: honest[2], 4: noise}
    payloads = build_payloads(
        reps, num_partners=2, tau_alpha=0.5, generator=torch.Generator().manual_seed(0),
        device="cpu", selection="relevance", exploration=0.0,
    )  # fmt: skip
    for node in (1, 2, 3):
        assert 4 not in payloads[node].partner_ids
    random_pick = select_partners([1, 2, 3, 4], 2, torch.Generator().manual_seed(0))
    assert any(4 in random_pick[n] for n in (1, 2, 3))  # what relevance avoids


def test_relevance_checks_its_arguments():
    with pytest.raises(ValueError, match="exploration"):
        select_relevant_partners([1, 2], torch.eye(2), 1, torch.Generator(), exploration=2.0)
    with pytest.raises(ValueError, match="similarity must be"):
        select_relevant_partners([1, 2, 3], torch.eye(2), 1, torch.Generator())
    with pytest.raises(ValueError, match="selection must be"):
        build_payloads(
            {1: torch.eye(2), 2: torch.eye(2)}, num_partners=1, tau_alpha=1.0,
            generator=torch.Generator(), selection="best",
        )  # fmt: skip


# ---------------------------------------------------------------- the validation gate


@pytest.mark.parametrize(
    ("before", "after", "scale", "tolerance", "kept", "new_scale"),
    [
        (1.0, 0.9, 1.0, 0.0, True, 1.0),  # helped: kept, scale stays at 1
        (1.0, 0.9, 0.25, 0.0, True, 0.5),  # helped after a setback: scale doubles back
        (1.0, 1.0, 0.5, 0.0, True, 1.0),  # no change is not harm
        (1.0, 1.1, 1.0, 0.0, False, 0.5),  # hurt: rolled back, scale halves
        (1.0, 1.1, 0.5, 0.0, False, 0.25),
        (1.0, 1.04, 1.0, 0.05, True, 1.0),  # within tolerance
        (1.0, 1.06, 1.0, 0.05, False, 0.5),
        (0.0, 0.01, 1.0, 0.5, False, 0.5),  # a zero loss: any rise is harm
    ],
)
def test_gate_decisions(before, after, scale, tolerance, kept, new_scale):
    assert gate_decision(before, after, scale=scale, tolerance=tolerance) == (kept, new_scale)


@pytest.mark.parametrize(
    ("before", "after", "scale", "kept", "new_scale"),
    [
        (1.0, 0.9, 1.0, True, 2.0),  # helping partners: lambda grows past the configured one
        (1.0, 0.9, 2.0, True, 4.0),
        (1.0, 0.9, 4.0, True, 4.0),  # up to the cap
        (1.0, 1.1, 4.0, False, 2.0),  # and halves again when they stop helping
    ],
)
def test_gate_grows_lambda_up_to_its_cap(before, after, scale, kept, new_scale):
    assert gate_decision(before, after, scale=scale, max_scale=4.0) == (kept, new_scale)


@pytest.mark.parametrize(
    ("scale", "min_scale", "new_scale"),
    [
        (1.0, 0.0, 0.5),  # no floor: halves
        (0.5, 0.25, 0.25),  # down to the floor
        (0.25, 0.25, 0.25),  # and no further
        (1.0, 1.0, 1.0),  # floor 1: the gate only rolls back, lambda never shrinks
    ],
)
def test_gate_shrinks_lambda_down_to_its_floor(scale, min_scale, new_scale):
    assert gate_decision(1.0, 1.1, scale=scale, min_scale=min_scale) == (False, new_scale)


@pytest.mark.parametrize(
    ("loss_after", "metric_before", "metric_after", "kept"),
    [
        (1.2, 0.50, 0.55, True),  # a higher metric wins, although the loss rose
        (0.8, 0.50, 0.45, False),  # a lower metric loses, although the loss fell
        (0.8, 0.50, 0.50, True),  # a tie: the lower loss decides
        (1.2, 0.50, 0.50, False),
        (1.2, None, None, False),  # no metrics: the loss rule
    ],
)
def test_gate_on_the_validation_metric(loss_after, metric_before, metric_after, kept):
    decision = gate_decision(
        1.0, loss_after, scale=1.0, metric_before=metric_before, metric_after=metric_after
    )
    assert decision[0] is kept


@pytest.mark.parametrize("harm", [True, False])
def test_gate_rolls_back_an_update_that_hurts_validation(monkeypatch, harm):
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(
        CONFIG, algorithm="pairwise", validation_fraction=0.25, gate="validation",
        contrastive_steps=3,
    )  # fmt: skip
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    trainer.supervised_update()
    g = torch.Generator().manual_seed(9)
    noise = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(3)}
    payload = build_payloads(noise, num_partners=2, tau_alpha=0.5, generator=g, device="cpu")[0]
    model_before = trainer.model.state_for_checkpoint()
    optimizer_steps = trainer.optimizer.state_dict()["state"][0]["step"].item()
    losses = iter([1.0, 2.0 if harm else 0.5])  # validation loss before, after the update
    monkeypatch.setattr(trainer, "validation_loss", lambda: next(losses))
    result = trainer.contrastive_update(INDICES, payload, weight=1.0)
    assert result["gate-kept"] == (0.0 if harm else 1.0)
    model_after = trainer.model.state_for_checkpoint()
    unchanged = all(torch.equal(model_before[k], model_after[k]) for k in model_before)
    steps = trainer.optimizer.state_dict()["state"][0]["step"].item()
    assert unchanged == harm  # rolled back exactly, or kept
    assert steps == (optimizer_steps if harm else optimizer_steps + 3)
    assert trainer.gate_scale == (0.5 if harm else 1.0)
    # The next round's effective lambda is the schedule's times the gate's scale.
    losses = iter([1.0, 1.0])
    assert trainer.contrastive_update(INDICES, payload, weight=0.8)["lambda"] == pytest.approx(
        0.8 * (0.5 if harm else 1.0)
    )


@pytest.mark.parametrize("joined_better", [True, False])
def test_paired_gate_keeps_the_better_of_the_round_with_and_without_contrast(
    monkeypatch, joined_better
):
    profile = load_federation(TINY_FEDERATION).users[3]  # BERT: dropout draws too
    config = dataclasses.replace(
        CONFIG, algorithm="pairwise", validation_fraction=0.25, gate="paired",
        contrastive_steps=3,
    )  # fmt: skip
    g = torch.Generator().manual_seed(9)
    noise = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(3)}
    payload = build_payloads(noise, num_partners=2, tau_alpha=0.5, generator=g, device="cpu")[0]

    def trained_once():
        trainer = build_trainer(config, profile, TINY_FEDERATION)
        with trainer.random_state():
            trainer.supervised_update()
        return trainer

    gated, alone, joined = trained_once(), trained_once(), trained_once()
    with alone.random_state():  # the round without its contrastive update
        alone.supervised_update()
    with joined.random_state():  # the round with it, ungated
        joined.contrastive_update(INDICES, payload)
        joined.supervised_update()
    losses = iter([1.0, 0.5 if joined_better else 2.0])  # validation: alone, then joined
    monkeypatch.setattr(gated, "validation_loss", lambda: next(losses))
    with gated.random_state():
        result = gated.train_round(INDICES, payload)

    expected = joined if joined_better else alone
    assert result["gate-kept"] == float(joined_better)
    assert torch.equal(gated.represent(INDICES), expected.represent(INDICES))
    got, want = gated.state_dict(), expected.state_dict()
    assert torch.equal(got["generator"], want["generator"])  # same batch order from here on
    assert torch.equal(got["rng_state"]["cpu"], want["rng_state"]["cpu"])
    assert got["optimizer"]["state"][0]["step"] == want["optimizer"]["state"][0]["step"]
    assert gated.gate_scale == (1.0 if joined_better else 0.5)
    assert not torch.equal(alone.represent(INDICES), joined.represent(INDICES))


@pytest.mark.parametrize("joined_better", [True, False])
def test_paired_gate_on_the_metric_follows_the_metric_not_the_loss(monkeypatch, joined_better):
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(
        CONFIG, algorithm="pairwise", validation_fraction=0.25, gate="paired",
        gate_criterion="metric", gate_min_scale=1.0,
    )  # fmt: skip
    g = torch.Generator().manual_seed(9)
    noise = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(3)}
    payload = build_payloads(noise, num_partners=2, tau_alpha=0.5, generator=g, device="cpu")[0]
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    # Validation (alone, then joined): the loss says the opposite of the metric.
    losses = iter([1.0, 2.0] if joined_better else [2.0, 1.0])
    metrics = iter([0.4, 0.6] if joined_better else [0.6, 0.4])
    monkeypatch.setattr(trainer, "validation_loss", lambda: next(losses))
    monkeypatch.setattr(trainer, "validation_metric", lambda: next(metrics))
    with trainer.random_state():
        result = trainer.train_round(INDICES, payload)
    assert result["gate-kept"] == float(joined_better)
    assert trainer.gate_scale == 1.0  # gate-min-scale 1: a rejection does not shrink lambda


# ---------------------------------------------------------------- schedule and knobs


def test_warmup_and_ramp_schedule_lambda():
    config = RunConfig(contrastive_weight=0.4, warmup_rounds=2, lambda_ramp_rounds=4)
    assert [config.lambda_at(r) for r in range(1, 9)] == pytest.approx(
        [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    )
    assert RunConfig(contrastive_weight=0.5).lambda_at(1) == 0.5


def test_a_round_exchanges_past_warm_up_with_lambda_or_distillation():
    config = RunConfig(contrastive_weight=0.4, warmup_rounds=2, distill_weight=0.0)
    assert [config.exchange_at(r) for r in range(1, 5)] == [False, False, True, True]
    distil_only = RunConfig(contrastive_weight=0.0, distill_weight=1.0, warmup_rounds=1)
    assert [distil_only.exchange_at(r) for r in range(1, 4)] == [False, True, True]
    assert not RunConfig(contrastive_weight=0.0, distill_weight=0.0).exchange_at(3)
    assert not RunConfig(algorithm="local").exchange_at(3)


def test_gate_needs_a_validation_split():
    with pytest.raises(ValueError, match="validation-fraction"):
        RunConfig(gate="validation", validation_fraction=0.0)
    RunConfig(algorithm="local", gate="validation", validation_fraction=0.0)  # nothing to gate


def test_frozen_public_norm_leaves_batchnorm_statistics_alone():
    profile = load_federation(TINY_FEDERATION).users[0]  # small CNN, BatchNorm
    g = torch.Generator().manual_seed(0)
    reps = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(3)}
    payload = build_payloads(reps, num_partners=2, tau_alpha=0.5, generator=g, device="cpu")[0]

    def running_stats(public_norm: str) -> dict[str, torch.Tensor]:
        config = dataclasses.replace(CONFIG, algorithm="muscle", public_norm=public_norm)
        trainer = build_trainer(config, profile, TINY_FEDERATION)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" in k}
        trainer.contrastive_update(INDICES, payload)
        assert trainer.model.training  # the norm layers are back in train mode
        after = {k: v for k, v in trainer.model.state_dict().items() if "running" in k}
        return {k: after[k] - before[k] for k in before}

    frozen = running_stats("frozen")
    assert frozen and all(torch.count_nonzero(d) == 0 for d in frozen.values())
    assert any(torch.count_nonzero(d) > 0 for d in running_stats("train").values())


def test_mlp_projection_trains_and_leaves_the_local_baseline_unchanged():
    profile = load_federation(TINY_FEDERATION).users[0]
    linear = build_trainer(
        dataclasses.replace(CONFIG, algorithm="muscle"), profile, TINY_FEDERATION
    )
    config = dataclasses.replace(CONFIG, algorithm="muscle", projection="mlp")
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    assert isinstance(trainer.model.projection, torch.nn.Sequential)
    # Encoder and head start where the linear run's do (the local baseline is shared).
    for name, value in linear.model.state_dict().items():
        if not name.startswith("projection."):
            assert torch.equal(trainer.model.state_dict()[name], value), name
    # The optimiser holds the MLP's parameters, and a contrastive step moves them.
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in held for p in trainer.model.projection.parameters())
    g = torch.Generator().manual_seed(0)
    reps = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(3)}
    payload = build_payloads(reps, num_partners=2, tau_alpha=0.5, generator=g, device="cpu")[0]
    before = [p.detach().clone() for p in trainer.model.projection.parameters()]
    trainer.contrastive_update(INDICES, payload)
    after = list(trainer.model.projection.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def _partner_payload(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    reps = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(3)}
    return build_payloads(reps, num_partners=2, tau_alpha=0.5, generator=g, device="cpu")[0]


def test_projection_steps_align_the_projection_and_leave_the_task_alone():
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(CONFIG, algorithm="muscle", projection_steps=30)
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    payload = _partner_payload()
    objective = get_algorithm("muscle").objective(payload, tau=0.1, tau_alpha=0.5)
    batch = trainer._batch(trainer.data.public, INDICES)

    def loss() -> float:  # in train mode, as the steps see the batch; statistics kept
        statistics = copy.deepcopy(trainer.model.state_dict())
        trainer.model.train()
        with torch.no_grad():
            value = float(objective(trainer.model.encode_public(batch)))
        trainer.model.load_state_dict(statistics)
        return value

    start_loss = loss()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.train()  # as in the contrastive steps: batch statistics, not updated
    trainer._align_projection(objective, batch)
    after = trainer.model.state_dict()
    for name, value in before.items():  # encoder, head and norm statistics as they were
        moved = not torch.equal(after[name], value)
        assert moved == name.startswith("projection."), name
    assert loss() < start_loss
    assert trainer.optimizer.state_dict()["state"] == {}  # the task's AdamW never stepped
    assert trainer.projection_optimizer is not None


def test_projection_steps_run_only_with_a_contrastive_term():
    profile = load_federation(TINY_FEDERATION).users[0]
    objective = get_algorithm("pairwise").objective(_partner_payload(), tau=0.1, tau_alpha=0.5)
    for weight, steps, aligned in ((1.0, 4, True), (0.0, 4, False), (1.0, 0, False)):
        config = dataclasses.replace(CONFIG, algorithm="pairwise", projection_steps=steps)
        trainer = build_trainer(config, profile, TINY_FEDERATION)
        # The steps themselves (as with a distillation teacher): lambda 0 has no term to align.
        trainer._contrastive_steps(objective, trainer._batch(trainer.data.public, INDICES), weight)
        assert (trainer.projection_optimizer is not None) == aligned


@pytest.mark.parametrize("projection_steps", [0, 5])
def test_a_rolled_back_update_keeps_the_aligned_projection(monkeypatch, projection_steps):
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(
        CONFIG, algorithm="pairwise", validation_fraction=0.25, gate="validation",
        projection_steps=projection_steps,
    )  # fmt: skip
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    model_before = trainer.model.state_for_checkpoint()
    losses = iter([1.0, 2.0])  # validation loss before, after: the gate rolls back
    monkeypatch.setattr(trainer, "validation_loss", lambda: next(losses))
    assert trainer.contrastive_update(INDICES, _partner_payload(), weight=1.0)["gate-kept"] == 0.0
    model_after = trainer.model.state_for_checkpoint()
    for name, value in model_before.items():
        kept_aligned = projection_steps > 0 and name.startswith("projection.")
        assert torch.equal(model_after[name], value) != kept_aligned, name


def test_projection_optimizer_state_survives_a_checkpoint():
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(CONFIG, algorithm="pairwise", projection_steps=3)
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    trainer.contrastive_update(INDICES, _partner_payload(), weight=1.0)
    resumed = build_trainer(config, profile, TINY_FEDERATION)
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.projection_optimizer is not None
    saved = trainer.projection_optimizer.state_dict()["state"]
    loaded = resumed.projection_optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)
    with pytest.raises(ConfigError, match="projection-steps"):
        RunConfig(projection_steps=-1)


@pytest.mark.parametrize("projection_steps", [0, 5])
def test_start_loss_is_the_loss_on_the_batch_before_the_rounds_steps(projection_steps):
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(
        CONFIG, algorithm="muscle", projection_steps=projection_steps, contrastive_steps=3
    )
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    payload = _partner_payload()
    objective = get_algorithm("muscle").objective(payload, tau=0.1, tau_alpha=0.5)
    statistics = copy.deepcopy(trainer.model.state_dict())
    trainer.model.train()  # as the steps see the batch
    with torch.no_grad():
        before = float(objective(trainer.model.encode_public(trainer._batch(
            trainer.data.public, INDICES))))  # fmt: skip
    trainer.model.load_state_dict(statistics)
    result = trainer.contrastive_update(INDICES, payload, weight=0.5)
    assert result["contrastive-loss-start"] == pytest.approx(before, rel=1e-5)
    # The round's steps moved z: their mean loss (lambda 0.5) is not the start's.
    assert result["contrastive-loss"] != pytest.approx(0.5 * before, rel=1e-5)
    # Without a contrastive term (as with a distillation teacher alone) there is no start.
    assert (
        trainer._contrastive_steps(objective, trainer._batch(trainer.data.public, INDICES), 0.0)[2]
        is None
    )


def test_target_decay_sends_rows_from_the_moving_average_of_the_projection():
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(CONFIG, algorithm="muscle", target_decay=0.75)
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    live = []
    for _ in range(3):  # the contrastive steps move the projection every round
        with trainer.random_state():
            trainer.train_round(INDICES, _partner_payload())
        live.append(copy.deepcopy(trainer.model.projection.state_dict()))
    assert trainer.target_projection is not None
    for name, average in trainer.target_projection.items():
        expected = (0.75 * live[0][name] + 0.25 * live[1][name]) * 0.75 + 0.25 * live[2][name]
        torch.testing.assert_close(average, expected)
        assert not torch.equal(average, live[2][name])
    batch = trainer._batch(trainer.data.public, INDICES)
    trainer.model.eval()
    sent = copy.deepcopy(trainer.model)
    sent.projection.load_state_dict(trainer.target_projection)
    with torch.no_grad():
        expected_rows = sent.encode_public(batch)
        own_rows = trainer.model.encode_public(batch)
    rows = trainer.represent(INDICES)
    torch.testing.assert_close(rows, expected_rows)
    assert not torch.allclose(rows, own_rows)
    for name, tensor in trainer.model.projection.state_dict().items():  # its own again
        assert torch.equal(tensor, live[2][name])
    resumed = build_trainer(config, profile, TINY_FEDERATION)
    resumed.load_state_dict(trainer.state_dict())
    torch.testing.assert_close(resumed.represent(INDICES), rows)
    with pytest.raises(ConfigError, match="target-decay"):
        RunConfig(target_decay=1.0)


def test_without_target_decay_the_rows_are_the_projections_own():
    profile = load_federation(TINY_FEDERATION).users[0]
    trainer = build_trainer(
        dataclasses.replace(CONFIG, algorithm="muscle"), profile, TINY_FEDERATION
    )
    with trainer.random_state():
        trainer.train_round(INDICES, _partner_payload())
    assert trainer.target_projection is None
    # The model trained alone sends no rows, so it keeps no average even with a decay.
    alone = build_trainer(
        dataclasses.replace(CONFIG, algorithm="local", target_decay=0.75), profile, TINY_FEDERATION
    )
    with alone.random_state():
        alone.train_round(INDICES, None)
    assert alone.target_projection is None
    trainer.model.eval()
    with torch.no_grad():
        own = trainer.model.encode_public(trainer._batch(trainer.data.public, INDICES))
    torch.testing.assert_close(trainer.represent(INDICES), own)


def test_separate_optimizer_state_keeps_the_task_moments_clean():
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(CONFIG, algorithm="pairwise", optimizer_state="separate")
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    g = torch.Generator().manual_seed(0)
    reps = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(3)}
    payload = build_payloads(reps, num_partners=2, tau_alpha=0.5, generator=g, device="cpu")[0]
    result = trainer.contrastive_update(INDICES, payload, weight=0.5)
    assert result["lambda"] == 0.5 and math.isfinite(result["contrastive-loss"])
    assert trainer.optimizer.state_dict()["state"] == {}  # the task optimiser never stepped
    assert trainer.contrastive_optimizer is not None
    assert trainer.contrastive_optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 3e-3)
    head = {id(p) for p in trainer.model.head.parameters()}
    assert not any(id(p) in head for p in trainer.contrastive_optimizer.param_groups[0]["params"])


def test_validation_split_and_label_budget_come_from_the_train_share():
    federation = load_federation(TINY_FEDERATION)
    profile = federation.users[0]

    def load(**kw):
        return load_user_data(profile, federation, source="world", public_size=64, seed=0, **kw)

    full = load()
    held = load(validation_fraction=0.25)
    scarce = load(validation_fraction=0.25, label_budget=10)
    assert held.validation is not None and full.validation is None
    assert len(held.train) + len(held.validation) == len(full.train)
    assert len(scarce.train) == 10 and scarce.validation is not None
    assert len(scarce.validation) == len(held.validation)
    assert held.test["label"] == full.test["label"]  # the test split is never touched
    assert held.test.to_dict() == full.test.to_dict()


# ---------------------------------------------------------------- noise partners, in process

NOISE_FEDERATION = """
[data]
image-size = 32
private-size = 960
test-fraction = 0.25
"""
NOISE_TEST_EXAMPLES = 60  # each of 4 users' test split: one example is 1/60 of its accuracy
USER = """
[[users]]
id = "{id}"
model = "{model}"
task = "image-classification"
partition = "iid"
[users.model-config]
image_size = 32
channels = [8, 16, 32, 32]
stem_width = 8
"""


@pytest.fixture
def noise_model_type():
    """A registered model type whose representations of the public set are random noise."""
    from fedmuscle_flwr.models import register_client_model
    from fedmuscle_flwr.models.registry import MODELS
    from fedmuscle_flwr.models.vision import build_small_cnn

    noise = torch.Generator().manual_seed(1234)

    @register_client_model("noise-cnn")
    def build_noise_cnn(**cfg):
        model = build_small_cnn(**cfg)

        def encode_public(batch):  # noise, with a (zero) gradient path to the weights
            rows = torch.randn(len(batch["image"]), model.embed_dim, generator=noise)
            return F.normalize(rows + 0 * model.projection.weight.sum(), dim=-1)

        model.encode_public = encode_public
        return model

    yield
    MODELS.remove("noise-cnn")


@pytest.mark.usefixtures("noise_model_type", "flower_task_identity")
@pytest.mark.parametrize("gate", ["validation", "paired"])
def test_a_user_whose_partners_are_noise_ends_no_worse_than_local(tmp_path, gate):
    import json

    from fedmuscle_flwr.results import RunResults
    from server_app.inprocess import run_inprocess

    federation = tmp_path / "noise.toml"
    users = [USER.format(id="honest", model="small-cnn")]
    users += [USER.format(id=f"noise-{i}", model="noise-cnn") for i in range(3)]
    federation.write_text(NOISE_FEDERATION + "".join(users))
    base = {
        "federation": str(federation), "num-server-rounds": 6, "local-steps": 12,
        "public-size": 64, "public-batch-size": 16, "embed-dim": 16, "num-partners": 2,
        "batch-size": 16, "learning-rate": 3e-3, "validation-fraction": 0.2,
        "contrastive-steps": 5, "node-wait-timeout": 1.0,
    }  # fmt: skip

    def honest(name: str, **overrides) -> tuple[float, RunResults]:
        torch.manual_seed(0)
        config = base | overrides | {"output-dir": str(tmp_path / name)}
        results = RunResults.from_dict(json.loads(run_inprocess(config).read_text()))
        return results.final["honest"]["accuracy"], results

    local, _ = honest("local", algorithm="local")
    gated, results = honest("gated", algorithm="muscle", gate=gate)
    lambdas = [r.metrics["honest"].get("lambda") for r in results.rounds[1:]]
    kept = [r.metrics["honest"].get("gate-kept") for r in results.rounds[1:]]
    assert not any(r.failed for r in results.rounds)
    assert all(v is not None for v in lambdas) and 0.0 in kept  # noise was rolled back
    assert min(lambdas) < max(lambdas)  # and the gate lowered the honest user's lambda
    assert all(
        set(r.partners["honest"]) <= {"noise-0", "noise-1", "noise-2"} for r in results.rounds[1:]
    )
    assert gated >= local - 1 / NOISE_TEST_EXAMPLES, (gated, local)  # at most one example


@pytest.mark.usefixtures("flower_task_identity")
@pytest.mark.parametrize("criterion", ["loss", "metric", "bootstrap"])
def test_fallback_reports_the_local_baseline_or_the_joined_model_round_by_round(
    tmp_path, criterion
):
    """fallback = "local": each user also trains alone, exactly as its local baseline run,
    and each round reports the test metrics of whichever model is better on validation;
    the joined model (and so everything partners see) is the run without the fallback."""
    import json

    from fedmuscle_flwr.results import RunResults
    from server_app.inprocess import run_inprocess

    federation = tmp_path / "cnns.toml"
    users = [USER.format(id=f"cnn-{i}", model="small-cnn") for i in range(4)]
    federation.write_text(NOISE_FEDERATION + "".join(users))
    base = {
        "federation": str(federation), "num-server-rounds": 4, "local-steps": 3,
        "public-size": 64, "public-batch-size": 16, "embed-dim": 16, "num-partners": 2,
        "batch-size": 16, "learning-rate": 3e-3, "validation-fraction": 0.2,
        "contrastive-weight": 1.0, "gate": "off", "node-wait-timeout": 1.0,
    }  # fmt: skip

    def run(name: str, **overrides) -> RunResults:
        config = base | overrides | {"output-dir": str(tmp_path / name)}
        return RunResults.from_dict(json.loads(run_inprocess(config).read_text()))

    local = run("local", algorithm="local")
    joined = run("joined", fallback="off")
    chosen = run("fallback", fallback="local", **{"fallback-criterion": criterion})
    picks = []
    for r_local, r_joined, r_chosen in zip(local.rounds, joined.rounds, chosen.rounds, strict=True):
        assert r_chosen.partners == r_joined.partners and not r_chosen.failed
        for user, metrics in r_chosen.metrics.items():
            alone = metrics["fallback-local"] == 1.0
            picks.append(alone)
            if criterion == "bootstrap":  # the joined model only with a lead that resamples keep
                pooled, last = metrics["fallback-joined-share"], metrics["fallback-last-share"]
                assert alone == (pooled < 0.8 or last < 0.5)  # over 3 rounds, not lost in this
            source = r_local if alone else r_joined
            assert metrics["accuracy"] == source.metrics[user]["accuracy"], (user, r_chosen.round)
            assert metrics["joined-accuracy"] == r_joined.metrics[user]["accuracy"]
            assert metrics["train-loss"] == r_joined.metrics[user]["train-loss"]
    assert True in picks and False in picks  # both models were chosen somewhere
    with pytest.raises(ConfigError, match="validation-fraction"):
        RunConfig(fallback="local", validation_fraction=0.0, gate="off")
    with pytest.raises(ConfigError, match="twice"):
        RunConfig(fallback="local", dp=True)


def test_fallback_auto_trains_alone_only_where_it_can():
    """The default, fallback = "auto": on where there is a validation split and no DP."""
    assert RunConfig().fallback == "auto" and RunConfig().uses_fallback
    assert not RunConfig(dp=True).uses_fallback  # DP would pay for the second model twice
    assert not RunConfig(validation_fraction=0.0, gate="off").uses_fallback  # no judge
    assert not RunConfig(algorithm="local").uses_fallback  # a local run is its own baseline
    assert not RunConfig(fallback="off").uses_fallback
    assert RunConfig(fallback="local").uses_fallback


def test_complement_picks_the_least_similar_partners():
    g = torch.Generator().manual_seed(5)
    latent = unit(g, 32, 16)
    twins = [F.normalize(latent + 0.2 * unit(g, 32, 16), dim=-1).float() for _ in range(3)]
    stranger = unit(g, 32, 16).float()
    reps = {1: twins[0], 2: twins[1], 3: twins[2], 4: stranger}

    def partners(selection: str) -> dict[int, tuple[int, ...]]:
        payloads = build_payloads(
            reps, num_partners=1, tau_alpha=0.5, generator=torch.Generator().manual_seed(0),
            device="cpu", selection=selection, exploration=0.0,
        )  # fmt: skip
        return {n: p.partner_ids for n, p in payloads.items()}

    complement, relevance = partners("complement"), partners("relevance")
    for node in (1, 2, 3):
        assert complement[node] == (4,)  # the one that sees the batch differently
        assert relevance[node] != (4,)
    assert complement[4] != relevance[4]


def test_config_and_payloads_know_the_same_partner_rules():
    from fedmuscle_flwr.aggregation import SELECTIONS
    from fedmuscle_flwr.config import PARTNER_SELECTIONS

    assert set(SELECTIONS) == set(PARTNER_SELECTIONS)


# ---------------------------------------------------------------- the fallback's bootstrap


def _accuracy_inputs(correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for 3 classes that are right exactly where ``correct`` says, and the targets."""
    target = torch.arange(len(correct)) % 3
    predicted = torch.where(torch.tensor(correct), target, (target + 1) % 3)
    return F.one_hot(predicted, 3).float(), target


def test_bootstrap_trusts_a_clear_lead_and_not_a_lucky_one():
    from fedmuscle_flwr.tasks import get_task
    from fedmuscle_flwr.training.bootstrap import paired_bootstrap_share

    task = get_task("image-classification")
    base = [True] * 12 + [False] * 28  # 40 validation examples, the lone model right on 12

    def share(joined_correct: list[bool]) -> float:
        alone, target = _accuracy_inputs(base)
        joined, _ = _accuracy_inputs(joined_correct)
        return paired_bootstrap_share(task, 3, joined, alone, target)

    assert share(base) == 0.5  # the same predictions: every resample a tie
    clear = [True] * 22 + [False] * 18  # right on 10 more examples, wrong on none more
    assert share(clear) > 0.99
    worse = [False] * 12 + [False] * 28  # wrong where the lone model was right
    assert share(worse) < 0.01
    # One example ahead, from two that changed places: no lead a resample can trust.
    lucky = [True] * 11 + [False] + [True, True] + [False] * 26
    assert 0.5 < share(lucky) < 0.8
    assert share(lucky) == share(lucky)  # seeded: the same resamples every call


def test_bootstrap_window_trusts_a_lead_held_over_rounds_not_one_round():
    """fallback-window: a lead kept over the window's rounds counts, where the last round
    alone is a tie; a lead of the last round alone, after rounds behind, does not."""
    from fedmuscle_flwr.tasks import get_task
    from fedmuscle_flwr.training.bootstrap import paired_bootstrap_share

    task = get_task("image-classification")
    base = [True] * 12 + [False] * 28  # the lone model, the same in every round
    ahead = [True] * 12 + [True] * 4 + [False] * 24  # right on 4 more, wrong on none more
    behind = [False] * 4 + [True] * 8 + [False] * 28  # wrong on 4 the lone model gets

    def share(*rounds: list[bool]) -> float:
        joined = torch.cat([_accuracy_inputs(correct)[0] for correct in rounds])
        alone, target = _accuracy_inputs(base)
        alone, target = alone.repeat(len(rounds), 1), target.repeat(len(rounds))
        return paired_bootstrap_share(task, 3, joined, alone, target, rounds=len(rounds))

    assert share(base) == 0.5  # the last round alone: a tie
    assert share(ahead, ahead, base) > 0.9  # two rounds ahead, then a tie
    assert share(behind, behind, ahead) < 0.5  # ahead only in the last round
    # Rounds that repeat one another add no confidence: the examples are what is resampled.
    lucky = [True] * 11 + [False] + [True, True] + [False] * 26  # one ahead, by a swap
    assert 0.5 < share(lucky) < 0.8
    assert share(lucky, lucky, lucky) == share(lucky)


def _scored_on_every_resample(
    task, classes, joined, alone, target, resamples=100, seed=0, rounds=1
):
    """The share by definition: both models scored by torchmetrics on each resample's rows
    (with ``rounds``: each drawn example's rows in every round)."""
    metric = task.metric_objects(classes)[task.primary_metric]
    generator = torch.Generator().manual_seed(seed)
    count = len(target) // rounds
    wins = 0.0
    for _ in range(resamples):
        drawn = torch.randint(count, (count,), generator=generator)
        rows = torch.cat([drawn + r * count for r in range(rounds)])
        scores = []
        for preds in (joined, alone):
            metric.reset()
            metric.update(preds[rows], target[rows])
            scores.append(float(metric.compute()))
        ours, theirs = scores
        wins += 0.5 if math.isnan(ours) or math.isnan(theirs) or ours == theirs else ours > theirs
    return wins / resamples


@pytest.mark.parametrize(
    "task_name", ["image-classification", "multi-label-classification", "semantic-segmentation"]
)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), examples=st.integers(1, 40), rounds=st.integers(1, 3))
@pytest.mark.filterwarnings("ignore")
def test_bootstrap_share_is_each_resample_scored_by_torchmetrics(task_name, seed, examples, rounds):
    """The summed per-example states (accuracy, mIoU) give every resample's exact score,
    of one round or of a window of rounds."""
    from fedmuscle_flwr.tasks import get_task
    from fedmuscle_flwr.training.bootstrap import _per_example_states, paired_bootstrap_share

    task, classes = get_task(task_name), 4
    g = torch.Generator().manual_seed(seed)
    count = examples * rounds  # rows: every example once per round
    if task_name == "multi-label-classification":
        joined, alone = torch.rand(2, count, classes, generator=g)
        target = (torch.rand(count, classes, generator=g) > 0.6).long()
    elif task_name == "image-classification":
        joined, alone = torch.randn(2, count, classes, generator=g)
        target = torch.randint(classes, (count,), generator=g)
    else:  # a few pixels ignored, classes missing from some masks
        joined, alone = torch.randn(2, count, classes, 5, 5, generator=g)
        target = torch.randint(classes - 1, (count, 5, 5), generator=g)
        target[:, 0, :2] = task.ignore_index
    target = target[:examples].repeat(rounds, *([1] * (target.dim() - 1)))  # the same examples
    # The alone model is the joined one with a few examples changed: close calls, not ties.
    alone[: count // 2] = joined[: count // 2]
    metric = task.metric_objects(classes)[task.primary_metric]
    additive = _per_example_states(metric, (joined,), target) is not None
    assert additive == (task_name != "multi-label-classification")  # mAP: scored per resample
    expected = _scored_on_every_resample(
        task, classes, joined, alone, target, resamples=30, rounds=rounds
    )
    share = paired_bootstrap_share(
        task, classes, joined, alone, target, resamples=30, rounds=rounds
    )
    assert share == expected


def _resample_inputs(task_name: str, seed: int, examples: int, classes: int):
    """Random metric inputs with the awkward cases: ties, ignored pixels, absent classes."""
    g = torch.Generator().manual_seed(seed)
    if task_name == "multi-label-classification":  # scores on a coarse grid: many ties
        preds = torch.randint(0, 5, (examples, classes), generator=g).float() / 4
        target = (torch.rand(examples, classes, generator=g) > 0.7).long()
    elif task_name == "image-classification":
        preds = torch.randn(examples, classes, generator=g)
        target = torch.randint(classes, (examples,), generator=g)
    else:
        preds = torch.randn(examples, classes, 4, 4, generator=g)
        target = torch.randint(classes - 1, (examples, 4, 4), generator=g)
        target[:, 0, :3] = get_task(task_name).ignore_index
    return preds, target


@pytest.mark.parametrize(
    "task_name", ["image-classification", "multi-label-classification", "semantic-segmentation"]
)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), examples=st.integers(1, 30), logits=st.booleans())
@pytest.mark.filterwarnings("ignore")
def test_closed_form_scores_are_torchmetrics_on_each_resample(task_name, seed, examples, logits):
    """accuracy, mIoU and mAP of every resample (multiplicities, zeros included) equal
    torchmetrics updated with that resample's rows; NaN where torchmetrics gives NaN."""
    from fedmuscle_flwr.training.resampled import resampled_scores

    task, classes = get_task(task_name), 3
    preds, target = _resample_inputs(task_name, seed, examples, classes)
    if logits and task_name == "multi-label-classification":
        preds = preds * 8 - 4  # outside [0, 1]: torchmetrics takes the sigmoid
    metric = task.metric_objects(classes)[task.primary_metric]
    g = torch.Generator().manual_seed(seed + 1)
    counts = torch.stack(
        [torch.bincount(torch.randint(examples, (examples,), generator=g), minlength=examples)
         for _ in range(12)]
    )  # fmt: skip
    scores = resampled_scores(metric, preds, target, counts)
    assert scores is not None and scores.shape == (12,)
    for row, score in zip(counts, scores.tolist(), strict=True):
        rows = torch.repeat_interleave(torch.arange(examples), row)
        metric.reset()
        metric.update(preds[rows], target[rows])
        expected = float(metric.compute())
        if math.isnan(expected):
            assert math.isnan(score)
        else:
            assert score == pytest.approx(expected, abs=1e-6)


def test_closed_forms_leave_other_metrics_to_torchmetrics():
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassJaccardIndex,
        MultilabelAveragePrecision,
    )

    from fedmuscle_flwr.training.resampled import resampled_scores

    preds, target, counts = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.ones(2, 4)
    micro = MulticlassAccuracy(3, average="micro")
    assert resampled_scores(micro, preds, target, counts) is not None
    for other in (
        MulticlassAccuracy(3, average="macro"),
        MulticlassAccuracy(3, average="micro", top_k=2),
        MulticlassAccuracy(3, average="micro", ignore_index=0),
        MulticlassJaccardIndex(3, average="micro"),
    ):
        assert resampled_scores(other, preds, target, counts) is None
    multi_hot = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    weighted = MultilabelAveragePrecision(3, average="weighted")
    assert resampled_scores(weighted, preds.sigmoid(), multi_hot, counts) is None


class _PluginMetricTask:
    """A plug-in-like task whose primary metric has no closed form: macro accuracy (additive
    states) or weighted mAP (scored on each resample)."""

    primary_metric = "accuracy"

    def __init__(self, average: str):
        self.average = average

    def metric_objects(self, num_classes):
        from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

        if self.average == "weighted-map":
            return {"accuracy": MultilabelAveragePrecision(num_classes, average="weighted")}
        return {"accuracy": MulticlassAccuracy(num_classes, average=self.average)}


@pytest.mark.parametrize("average", ["macro", "weighted-map"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), examples=st.integers(2, 30))
@pytest.mark.filterwarnings("ignore")
def test_bootstrap_scores_other_metrics_with_torchmetrics(average, seed, examples):
    """Metrics without a closed form: additive states summed (macro accuracy) or each
    resample scored (weighted mAP) give the share by definition."""
    from fedmuscle_flwr.training.bootstrap import paired_bootstrap_share

    task, classes = _PluginMetricTask(average), 3
    name = "multi-label-classification" if average == "weighted-map" else "image-classification"
    joined, target = _resample_inputs(name, seed, examples, classes)
    alone, _ = _resample_inputs(name, seed + 7, examples, classes)
    alone[: examples // 2] = joined[: examples // 2]
    expected = _scored_on_every_resample(task, classes, joined, alone, target, resamples=20)
    assert paired_bootstrap_share(task, classes, joined, alone, target, resamples=20) == expected


def test_bootstrap_checks_its_inputs():
    from fedmuscle_flwr.tasks import get_task
    from fedmuscle_flwr.training.bootstrap import paired_bootstrap_share

    task = get_task("image-classification")
    preds, target = _accuracy_inputs([True, False, True])
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap_share(task, 3, preds[:2], preds, target)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_share(task, 3, preds, preds, target, resamples=0)
    with pytest.raises(ValueError, match="rounds must be >= 1 and divide the 3 rows"):
        paired_bootstrap_share(task, 3, preds, preds, target, rounds=2)
