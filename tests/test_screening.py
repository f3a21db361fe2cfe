"""Screening of arrived Z (beyond the paper): users at chance are flagged, honest ones never.

Synthetic federations: honest users see one latent structure of the public batch through
different random "models" (and a rare-task user through another nonlinearity and only part
of it); each attack is what a lying client can compute (client_app/attacks.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedmuscle_flwr.attacks import ATTACKS
from fedmuscle_flwr.screening import MIN_ROUNDS, combined_score, round_scores, screen

B, D, LATENT = 64, 32, 8


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _honest_round(g: torch.Generator, users: int = 5, noise: float = 6.0) -> torch.Tensor:
    """(users + 1, B, D): ``users`` honest encoders and one rare-task user (the last)."""
    latent = torch.randn(B, LATENT, generator=g)
    honest = [
        _unit(latent @ torch.randn(LATENT, D, generator=g) + noise * torch.randn(B, D, generator=g))
        for _ in range(users)
    ]
    # A rare task: half of the latent factors, through another nonlinearity, at the same
    # signal strength as the others.
    rare = torch.relu(latent[:, : LATENT // 2] @ torch.randn(LATENT // 2, D, generator=g))
    rare = rare / rare.std() * (latent @ torch.randn(LATENT, D, generator=g)).std()
    return torch.stack([*honest, _unit(rare + noise * torch.randn(B, D, generator=g))])


def _run(attack: str | None, rounds: int, mode: str = "exclude", seed: int = 0):
    """Screen ``rounds`` rounds; user 0 lies with ``attack``. Returns the last screens."""
    g = torch.Generator().manual_seed(seed)
    history: dict[int, list[float]] = {}
    previous = None
    screens = {}
    for r in range(rounds):
        z = _honest_round(g)
        honest_z0 = z[0].clone()
        if attack is not None:
            z[0] = ATTACKS[attack](z[0], g, previous)
        previous = honest_z0
        screens = screen(
            dict(enumerate(z)), mode=mode, generator=torch.Generator().manual_seed(r),
            history=history,
        )  # fmt: skip
        for user, s in screens.items():
            history.setdefault(user, []).append(s.round_score)
    return screens


@pytest.mark.parametrize("attack", ["random", "constant", "shuffle", "replay", "target"])
def test_each_attack_at_chance_is_excluded_and_no_honest_user_is(attack: str) -> None:
    screens = _run(attack, rounds=6)
    assert screens[0].excluded and screens[0].score < 3.0
    for user in range(1, 6):
        assert not screens[user].flagged, (user, screens[user])


def test_an_honest_federation_with_a_rare_task_loses_nobody() -> None:
    for seed in range(5):
        screens = _run(None, rounds=8, seed=seed)
        assert not any(s.flagged for s in screens.values()), screens
        assert screens[5].score > 3.0  # the rare-task user too


def test_a_rotated_copy_is_not_caught() -> None:
    """The documented blind spot: linear CKA does not see a rotation of the space."""
    screens = _run("rotate", rounds=6)
    assert not screens[0].flagged


def test_flag_never_excludes_and_exclusion_waits_for_evidence() -> None:
    flagged = _run("random", rounds=6, mode="flag")
    assert flagged[0].flagged and not flagged[0].excluded
    early = _run("random", rounds=MIN_ROUNDS - 1)
    assert early[0].flagged and not early[0].excluded
    assert screen({}, mode="exclude", generator=torch.Generator()) == {}
    assert screen({0: torch.eye(4)}, mode="off", generator=torch.Generator()) == {}
    with pytest.raises(ValueError, match="screening mode"):
        screen({0: torch.eye(4)}, mode="strict", generator=torch.Generator())


def test_a_user_comes_back_once_its_evidence_passes_the_threshold() -> None:
    history = {0: [0.0, 0.0, 0.0], 1: [9.0, 9.0, 9.0]}
    g = torch.Generator().manual_seed(0)
    z = _honest_round(g, users=3)
    back = screen(dict(enumerate(z)), mode="exclude", generator=g, history={0: [5.0] * 8})
    assert not back[0].excluded
    still = screen(dict(enumerate(z)), mode="exclude", generator=g, history=history)
    assert still[0].score < back[0].score


def test_round_scores_constant_gram_is_zero_and_lonely_user_is_inf() -> None:
    g = torch.Generator().manual_seed(0)
    z = _honest_round(g, users=3)
    z[1] = _unit(torch.ones(B, D))
    scores = round_scores(z, generator=g)
    assert scores[1] == 0.0 and bool(torch.isfinite(scores).all())
    assert math.isinf(float(round_scores(z[:1], generator=g)[0]))


def test_round_scores_do_not_depend_on_the_order_of_users() -> None:
    z = _honest_round(torch.Generator().manual_seed(3))
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    plain = round_scores(z, generator=torch.Generator().manual_seed(9))
    # Same permutations per user since each user draws none of its own: compare per user.
    permuted = round_scores(z[perm], generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(permuted, plain[perm])


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=30))
def test_combined_score_is_stouffers(scores: list[float]) -> None:
    expected = sum(scores) / math.sqrt(len(scores))
    assert math.isclose(combined_score(scores), expected, abs_tol=1e-9)
    assert math.isclose(combined_score([2.0] * len(scores)), 2.0 * math.sqrt(len(scores)))
