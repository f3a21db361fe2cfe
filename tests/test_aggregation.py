"""Server aggregation: partner selection, one-Gram payloads, determinism, payload sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_flwr.aggregation import build_payloads, select_partners
from fedmuscle_flwr.loss import (
    dense_muscle_loss,
    factored_payload_numel,
    muscle_loss,
    pairwise_log_alpha,
)


def representations(num_nodes: int, batch: int, dim: int, seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        10 + 7 * n: F.normalize(torch.randn(batch, dim, generator=g), dim=-1)
        for n in range(num_nodes)
    }


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.integers(0, 10_000))
def test_selection_picks_min_m_distinct_others(num_nodes, num_partners, seed):
    nodes = [3 * n + 1 for n in range(num_nodes)]
    selection = select_partners(nodes, num_partners, torch.Generator().manual_seed(seed))
    assert sorted(selection) == nodes
    for node, partners in selection.items():
        assert len(partners) == min(num_partners, num_nodes - 1)
        assert node not in partners
        assert len(set(partners)) == len(partners)
        assert set(partners) <= set(nodes)


def test_selection_is_roughly_uniform():
    counts = dict.fromkeys(range(1, 6), 0)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        for partner in select_partners([0, 1, 2, 3, 4, 5], 2, g)[0]:
            counts[partner] += 1
    assert all(abs(c / 4000 - 0.2) < 0.03 for c in counts.values()), counts


def test_payloads_are_deterministic_for_a_seed_and_differ_across_seeds():
    reps = representations(6, batch=8, dim=16)
    first = build_payloads(
        reps, num_partners=3, tau_alpha=0.5, generator=torch.Generator().manual_seed(42)
    )
    again = build_payloads(
        reps, num_partners=3, tau_alpha=0.5, generator=torch.Generator().manual_seed(42)
    )
    other = build_payloads(
        reps, num_partners=3, tau_alpha=0.5, generator=torch.Generator().manual_seed(43)
    )
    assert first.keys() == again.keys()
    for node in first:
        assert first[node].partner_ids == again[node].partner_ids
        assert torch.equal(first[node].others, again[node].others)
        assert torch.equal(first[node].log_alpha_pairs, again[node].log_alpha_pairs)
    assert any(first[n].partner_ids != other[n].partner_ids for n in first)


@pytest.mark.parametrize(("num_nodes", "num_partners"), [(2, 3), (4, 3), (6, 2), (6, 5)])
def test_payload_contents_and_size(num_nodes, num_partners):
    batch, dim = 6, 12
    reps = representations(num_nodes, batch, dim, seed=num_nodes)
    payloads = build_payloads(
        reps, num_partners=num_partners, tau_alpha=0.3, generator=torch.Generator().manual_seed(1)
    )
    effective = min(num_partners, num_nodes - 1)
    assert sorted(payloads) == sorted(reps)
    for node, payload in payloads.items():
        assert payload.num_partners == effective
        assert torch.equal(payload.others, torch.stack([reps[p] for p in payload.partner_ids]))
        assert torch.allclose(
            payload.log_alpha_pairs, pairwise_log_alpha(payload.others, tau_alpha=0.3), atol=1e-6
        )
        assert payload.numel() == effective * batch * dim + math.comb(effective, 2) * batch**2
        assert payload.numel() == factored_payload_numel(batch, effective, dim)
        # The loss a user computes from its payload equals the loss from the raw partners.
        from_payload = muscle_loss(
            reps[node],
            payload.others,
            tau=0.2,
            tau_alpha=0.3,
            log_alpha_pairs=payload.log_alpha_pairs,
        )
        direct = muscle_loss(
            reps[node], [reps[p] for p in payload.partner_ids], tau=0.2, tau_alpha=0.3
        )
        assert torch.allclose(from_payload, direct, atol=1e-5)


def test_single_arrival_gets_no_payload_and_empty_round_is_empty():
    reps = representations(1, 4, 8)
    assert build_payloads(reps, num_partners=3, tau_alpha=0.5, generator=torch.Generator()) == {}
    assert build_payloads({}, num_partners=3, tau_alpha=0.5, generator=torch.Generator()) == {}


def test_dense_payloads_on_request_match_factored_loss():
    reps = {k: v.double() for k, v in representations(4, batch=5, dim=6).items()}
    payloads = build_payloads(
        reps, num_partners=3, tau_alpha=0.4, generator=torch.Generator().manual_seed(0), dense=True
    )
    for node, payload in payloads.items():
        assert (
            payload.is_dense
            and payload.aggregated.shape == (5**3, 6)
            and payload.log_alpha.shape == (5**3,)
        )
        dense = dense_muscle_loss(reps[node], payload.aggregated, payload.log_alpha, tau=0.2)
        factored = muscle_loss(reps[node], payload.others, tau=0.2, tau_alpha=0.4)
        assert torch.allclose(dense, factored, atol=1e-10)
    with pytest.raises(ValueError, match="dense payload"):
        build_payloads(
            reps,
            num_partners=3,
            tau_alpha=0.4,
            generator=torch.Generator(),
            dense=True,
            max_dense_bytes=100,
        )


def test_alpha_one_gives_zero_blocks():
    payloads = build_payloads(
        representations(4, 4, 8), num_partners=3, tau_alpha=math.inf, generator=torch.Generator()
    )
    assert all(torch.count_nonzero(p.log_alpha_pairs) == 0 for p in payloads.values())


def test_inconsistent_shapes_and_bad_arguments_are_refused():
    reps = representations(3, 4, 8)
    reps[99] = F.normalize(torch.randn(5, 8), dim=-1)
    with pytest.raises(ValueError, match=r"share one \(B, d\) shape"):
        build_payloads(reps, num_partners=2, tau_alpha=0.5, generator=torch.Generator())
    with pytest.raises(ValueError, match="num_partners"):
        build_payloads(
            representations(3, 4, 8), num_partners=0, tau_alpha=0.5, generator=torch.Generator()
        )
    with pytest.raises(ValueError, match="tau_alpha"):
        build_payloads(
            representations(3, 4, 8), num_partners=1, tau_alpha=0.0, generator=torch.Generator()
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gram_on_cuda_matches_cpu():
    reps = representations(5, 16, 32)
    cpu = build_payloads(
        reps,
        num_partners=3,
        tau_alpha=0.5,
        generator=torch.Generator().manual_seed(0),
        device="cpu",
    )
    gpu = build_payloads(
        reps,
        num_partners=3,
        tau_alpha=0.5,
        generator=torch.Generator().manual_seed(0),
        device="cuda",
    )
    for node in cpu:
        assert gpu[node].partner_ids == cpu[node].partner_ids
        assert torch.allclose(gpu[node].log_alpha_pairs, cpu[node].log_alpha_pairs, atol=1e-4)
