"""A user's local work: contrastive steps learn, every algorithm runs, AMP autocasts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from client_app.app import build_trainer
from fedmuscle_flwr.aggregation import build_payloads
from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.training import contrastive_objective
from tests.tiny import TINY_FEDERATION

CONFIG = RunConfig(
    federation=TINY_FEDERATION, public_size=64, public_batch_size=8, embed_dim=16, local_steps=2,
    batch_size=8, learning_rate=3e-3, gate="off",
)  # fmt: skip
INDICES = list(range(8))


def partners_payload(dense: bool = False):
    g = torch.Generator().manual_seed(0)
    reps = {n: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for n in range(4)}
    return build_payloads(
        reps, num_partners=3, tau_alpha=0.5, generator=g, device="cpu", dense=dense
    )[0]


@pytest.mark.parametrize("algorithm", ["pairwise", "ensemble", "muscle"])
def test_contrastive_steps_reduce_the_loss(algorithm):
    profile = load_federation(TINY_FEDERATION).users[0]
    config = dataclasses.replace(CONFIG, algorithm=algorithm, contrastive_steps=15)
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    payload = partners_payload()
    objective = contrastive_objective(
        algorithm, payload, tau=config.tau, tau_alpha=config.tau_alpha
    )
    before = float(objective(trainer.represent(INDICES)))
    trainer.contrastive_update(INDICES, payload)
    after = float(objective(trainer.represent(INDICES)))
    assert math.isfinite(before) and after < before - 0.1


def test_dense_payload_gives_the_same_objective_as_factored():
    factored, dense = partners_payload(), partners_payload(dense=True)
    z = F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    a = contrastive_objective("muscle", factored, tau=0.1, tau_alpha=0.5)(z)
    b = contrastive_objective("muscle", dense, tau=0.1, tau_alpha=0.5)(z)
    assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="no contrastive loss"):
        contrastive_objective("local", factored, tau=0.1, tau_alpha=0.5)


@pytest.mark.parametrize("amp", [False, True])
def test_amp_runs_every_forward_pass_under_bfloat16_autocast(amp):
    profile = load_federation(TINY_FEDERATION).users[2]  # SegFormer
    trainer = build_trainer(dataclasses.replace(CONFIG, amp=amp), profile, TINY_FEDERATION)
    device = trainer.device.type
    seen: dict[str, set[tuple[bool, torch.dtype | None]]] = {}
    for name in ("task_loss", "forward_task", "encode_public"):
        original = getattr(trainer.model, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            on = torch.is_autocast_enabled(device)
            seen.setdefault(_name, set()).add(
                (on, torch.get_autocast_dtype(device) if on else None)
            )
            return _original(*args, **kwargs)

        setattr(trainer.model, name, spy)
    assert math.isfinite(trainer.supervised_update())
    assert 0.0 <= trainer.evaluate()["miou"] <= 1.0
    assert math.isfinite(
        trainer.contrastive_update(INDICES, partners_payload())["contrastive-loss"]
    )
    z = trainer.represent(INDICES)
    expected = {(True, torch.bfloat16)} if amp else {(False, None)}
    assert seen == dict.fromkeys(("task_loss", "forward_task", "encode_public"), expected)
    assert z.dtype == torch.float32 and torch.allclose(z.norm(dim=-1), torch.ones(len(INDICES)))


def test_zero_contrastive_weight_leaves_the_model_as_it_was():
    profile = load_federation(TINY_FEDERATION).users[2]  # SegFormer
    trainer = build_trainer(
        dataclasses.replace(CONFIG, amp=True, contrastive_weight=0.0), profile, TINY_FEDERATION
    )
    before = trainer.represent(INDICES)
    assert trainer.contrastive_update(INDICES, partners_payload()) == {"lambda": 0.0}
    assert torch.equal(trainer.represent(INDICES), before)


def test_a_users_rounds_do_not_depend_on_what_its_process_ran_before():
    """Same seed, same run: dropout draws come from the user's own generator state."""
    profile = load_federation(TINY_FEDERATION).users[3]  # BERT: dropout in train mode

    def three_rounds(other_users_draws: int) -> list[torch.Tensor]:
        trainer = build_trainer(CONFIG, profile, TINY_FEDERATION)
        assert trainer.model.training or any(
            isinstance(m, torch.nn.Dropout) and m.p > 0 for m in trainer.model.modules()
        )
        reps = []
        for _ in range(3):
            torch.rand(other_users_draws)  # what another user served by this process draws
            with trainer.random_state():
                trainer.supervised_update()
            reps.append(trainer.represent(INDICES))
        return reps

    alone, shared = three_rounds(0), three_rounds(1000)
    assert all(torch.equal(a, b) for a, b in zip(alone, shared, strict=True))


def test_random_state_leaves_the_process_generator_as_it_was():
    trainer = build_trainer(CONFIG, load_federation(TINY_FEDERATION).users[3], TINY_FEDERATION)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    with trainer.random_state():
        trainer.supervised_update()
    assert torch.equal(torch.rand(4), expected)
    saved = trainer.state_dict()["rng_state"]["cpu"]
    with trainer.random_state():
        pass
    assert torch.equal(trainer.rng_state["cpu"], saved)  # nothing drawn, nothing advanced


def test_fallback_window_pools_the_last_rounds_and_is_kept_in_the_state():
    """fallback-window = 2: each decision is the paired bootstrap of the last two rounds'
    validation outputs, and a trainer restored from its state pools the same rounds."""
    import io

    from fedmuscle_flwr.training.bootstrap import paired_bootstrap_share

    config = dataclasses.replace(CONFIG, validation_fraction=0.3, fallback_window=2)
    profile = load_federation(TINY_FEDERATION).users[0]
    trainer = build_trainer(config, profile, TINY_FEDERATION)
    assert trainer.fallback is not None and trainer.settings.fallback_window == 2
    outputs = []
    for _ in range(3):
        with trainer.random_state():
            trainer.train_round(INDICES, partners_payload(), weight=1.0)
        (joined, target), (alone, _) = (
            trainer.validation_outputs(),
            trainer.fallback.validation_outputs(),
        )
        outputs.append((joined, alone))
        share = trainer.evaluate()["fallback-joined-share"]
    assert not torch.equal(outputs[1][0], outputs[2][0])  # the rounds differ
    expected = paired_bootstrap_share(
        trainer.model.task_type, trainer.model.num_classes,
        torch.cat([outputs[1][0], outputs[2][0]]), torch.cat([outputs[1][1], outputs[2][1]]),
        target.repeat(2), rounds=2,
    )  # fmt: skip
    assert share == expected and len(trainer.fallback_outputs) == 1  # what round 4 pools

    buffer = io.BytesIO()  # through bytes, as the client's state store keeps it
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    restored = build_trainer(config, profile, TINY_FEDERATION)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for pooled, kept in zip(restored.fallback_outputs, outputs[2:], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(pooled, kept, strict=True))
    for user in (trainer, restored):
        with user.random_state():
            user.train_round(INDICES, partners_payload(), weight=1.0)
    assert restored.evaluate() == trainer.evaluate()


def test_fallback_window_trusts_a_lead_held_over_it_unless_this_round_lost(monkeypatch):
    """fallback-window = 3: the joined model is kept on a lead that survives resampling
    pooled over the window, not on one of this round alone; fallback-last-share drops a
    window's lead that this round lost."""
    profile = load_federation(TINY_FEDERATION).users[0]
    classes = build_trainer(CONFIG, profile, TINY_FEDERATION).model.num_classes
    target = torch.arange(40) % classes

    def outputs(correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        predicted = torch.where(torch.tensor(correct), target, (target + 1) % classes)
        return F.one_hot(predicted, classes).float(), target

    base = [True] * 12 + [False] * 28  # the lone model in every round
    ahead = [True] * 16 + [False] * 24  # right on 4 more, wrong on none more
    behind = [False] * 4 + [True] * 8 + [False] * 28  # wrong on 4 the lone model gets
    slip = [False] + [True] * 11 + [False] * 28  # wrong on one the lone model gets

    def decide(rounds: list[list[bool]], last_share: float) -> dict[str, float]:
        config = dataclasses.replace(
            CONFIG, validation_fraction=0.3, fallback_window=3, fallback_last_share=last_share
        )
        trainer = build_trainer(config, profile, TINY_FEDERATION)
        assert trainer.fallback is not None
        monkeypatch.setattr(trainer.fallback, "validation_outputs", lambda: outputs(base))
        for joined in rounds:
            monkeypatch.setattr(trainer, "validation_outputs", lambda j=joined: outputs(j))
            decision = trainer._fallback_decision(trainer.fallback)
        return decision

    held = decide([ahead, ahead, slip], 0.0)  # the window's lead, this round one behind
    assert held["fallback-joined-share"] >= 0.8 and held["fallback-last-share"] < 0.5
    assert held["fallback-local"] == 0.0
    guarded = decide([ahead, ahead, slip], 0.5)
    assert guarded["fallback-joined-share"] == held["fallback-joined-share"]
    assert guarded["fallback-local"] == 1.0  # this round lost: the lone model
    late = decide([behind, behind, ahead], 0.0)  # this round's lead alone
    assert late["fallback-joined-share"] < 0.8 <= late["fallback-last-share"]
    assert late["fallback-local"] == 1.0
