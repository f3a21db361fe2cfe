"""partner-selection = "gain": partners ranked by the validation gain credited to them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_flwr.aggregation import build_payloads, select_relevant_partners
from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.partner_gain import UNTRIED, credited_gains, gain_scores, round_gain
from fedmuscle_flwr.results import RoundRecord

USERS = ["a", "b", "c", "d"]


def paired(alone: float, joined: float) -> dict[str, float]:
    return {"validation-loss-alone": alone, "validation-loss-joined": joined}


def record(number: int, partners: dict[str, list[str]], metrics: dict[str, dict[str, float]]):
    return RoundRecord(round=number, partners=partners, metrics=metrics)


def test_round_gain_is_the_relative_drop_in_validation_loss_under_either_gate():
    assert round_gain(paired(2.0, 1.5)) == pytest.approx(0.25)
    assert round_gain(paired(2.0, 2.5)) == pytest.approx(-0.25)
    single = {"validation-loss-before": 1.0, "validation-loss-after": 0.9}
    assert round_gain(single) == pytest.approx(0.1)
    assert round_gain({"train-loss": 1.0}) is None  # no gated update this round
    assert round_gain(paired(0.0, 1.0)) is None
    assert round_gain(paired(math.nan, 1.0)) is None


def test_each_rounds_gain_is_credited_to_every_partner_of_that_round():
    rounds = [
        record(2, {"a": ["b", "c"]}, {"a": paired(1.0, 0.8)}),
        record(3, {"a": ["b", "d"]}, {"a": paired(1.0, 1.2)}),
        record(4, {"a": ["c"]}, {"a": {"train-loss": 1.0}}),  # no gate metrics: no credit
    ]
    credits = credited_gains(rounds)
    assert credits[("a", "b")] == pytest.approx([0.2, -0.2])
    assert credits[("a", "c")] == pytest.approx([0.2])
    assert credits[("a", "d")] == pytest.approx([-0.2])
    assert set(credits) == {("a", "b"), ("a", "c"), ("a", "d")}


def test_scores_put_untried_partners_first_by_cka_then_tried_ones_by_mean_gain():
    cka = torch.tensor(
        [[1.0, 0.9, 0.2, 0.5], [0.9, 1.0, 0.3, 0.1], [0.2, 0.3, 1.0, 0.4], [0.5, 0.1, 0.4, 1.0]]
    )
    rounds = [record(2, {"a": ["b", "c"]}, {"a": paired(1.0, 0.9)}),
              record(3, {"a": ["b"]}, {"a": paired(1.0, 1.3)})]  # fmt: skip
    scores = gain_scores(USERS, rounds, cka)
    assert scores[0, 3] == pytest.approx(UNTRIED + 0.5)  # d never tried
    assert scores[0, 2] == pytest.approx(0.1)  # c: one round at +10 %
    assert scores[0, 1] == pytest.approx((0.1 - 0.3) / 2)  # b: +10 % and -30 %
    assert torch.equal(scores[1:], cka[1:].double() + UNTRIED)  # the others tried nobody
    picks = select_relevant_partners(
        list(range(4)), scores, 3, torch.Generator().manual_seed(0), exploration=0.0
    )
    assert picks[0] == (3, 2, 1)  # untried d, then c (helped), then b (hurt on average)
    assert picks[1] == (0, 2, 3)  # all untried: by CKA


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=4, max_size=4, unique=True), st.integers(0, 99))
def test_without_exploration_a_user_keeps_the_partners_that_helped_it_most(percents, seed):
    """After every candidate was tried once, the M with the largest gains are chosen."""
    gains = [p / 100 for p in percents]
    rounds = [
        record(r + 2, {"a": [partner]}, {"a": paired(1.0, 1.0 - gain)})
        for r, (partner, gain) in enumerate(zip(["b", "c", "d", "e"], gains, strict=True))
    ]
    users = ["a", "b", "c", "d", "e"]
    cka = torch.rand(5, 5, generator=torch.Generator().manual_seed(seed))
    scores = gain_scores(users, rounds, cka)
    picks = select_relevant_partners(
        list(range(5)), scores, 2, torch.Generator().manual_seed(seed), exploration=0.0
    )
    chosen = {users[p] for p in picks[0]}
    ranked = sorted(zip(gains, ["b", "c", "d", "e"], strict=True), key=lambda t: -t[0])
    assert chosen == {name for _, name in ranked[:2]}


def test_gain_selection_goes_through_build_payloads_and_checks_its_arguments():
    reps = {n: torch.nn.functional.normalize(torch.randn(8, 4), dim=-1) for n in range(3)}
    # A rescore that makes node 0 prefer node 2 whatever the CKA says.
    prefer = torch.tensor([[0.0, -1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    payloads = build_payloads(
        reps, num_partners=1, tau_alpha=0.5, generator=torch.Generator().manual_seed(0),
        device="cpu", selection="gain", exploration=0.0, rescore=lambda cka: prefer,
    )  # fmt: skip
    assert payloads[0].partner_ids == (2,)
    with pytest.raises(ValueError, match="rescore"):
        build_payloads(
            reps, num_partners=1, tau_alpha=0.5, generator=torch.Generator(), selection="gain"
        )


def test_gain_selection_needs_a_gate():
    assert RunConfig.from_run_config({"partner-selection": "gain"}).gate == "paired"
    with pytest.raises(ConfigError, match='set gate="paired"'):
        RunConfig.from_run_config({"partner-selection": "gain", "gate": "off"})
    local = RunConfig.from_run_config(
        {"partner-selection": "gain", "gate": "off", "algorithm": "local"}
    )  # a local baseline ignores partners
    assert local.partner_selection == "gain"
