"""Properties P1-P6 of ALGORITHM.md and parity of the factored, dense and brute-force forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_flwr.loss import (
    MuscleObjective,
    build_dense_payload,
    dense_muscle_loss,
    ensemble_loss,
    info_nce,
    muscle_loss,
    pairwise_log_alpha,
    pairwise_loss,
)
from tests.reference import brute_force_muscle, naive_info_nce

temperatures = st.floats(min_value=0.05, max_value=1.0)


def unit_rows(
    generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def correlated(generator: torch.Generator, batch: int, num_others: int, dim: int, noise: float):
    """An anchor and M partners that see the same B latent samples, plus noise."""
    latent = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    views = [
        F.normalize(
            latent + noise * torch.randn(batch, dim, generator=generator, dtype=torch.float64),
            dim=-1,
        )
        for _ in range(num_others + 1)
    ]
    return views[0], views[1:]


@st.composite
def problems(draw, max_batch: int = 4, max_others: int = 3):
    batch = draw(st.integers(1, max_batch))
    num_others = draw(st.integers(1, max_others))
    dim = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return unit_rows(g, batch, dim), [unit_rows(g, batch, dim) for _ in range(num_others)]


@settings(max_examples=30, deadline=None)
@given(problems(), temperatures)
def test_p1_alpha_one_is_sum_of_info_nce(problem, tau):
    z, others = problem
    expected = sum(naive_info_nce(z, o, tau=tau) for o in others)
    assert torch.allclose(muscle_loss(z, others, tau=tau, tau_alpha=math.inf), expected, atol=1e-10)
    assert torch.allclose(pairwise_loss(z, others, tau=tau), expected, atol=1e-10)
    zeros = torch.zeros(math.comb(len(others), 2), z.shape[0], z.shape[0], dtype=z.dtype)
    assert torch.allclose(
        muscle_loss(z, others, tau=tau, tau_alpha=1.0, log_alpha_pairs=zeros), expected, atol=1e-10
    )


@settings(max_examples=30, deadline=None)
@given(problems(max_others=1), temperatures, temperatures)
def test_p2_single_partner_is_info_nce(problem, tau, tau_alpha):
    z, (other,) = problem
    expected = naive_info_nce(z, other, tau=tau)
    assert torch.allclose(
        muscle_loss(z, [other], tau=tau, tau_alpha=tau_alpha), expected, atol=1e-10
    )
    assert torch.allclose(info_nce(z, other, tau=tau), expected, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(problems(), temperatures, temperatures)
def test_p3_factored_dense_and_brute_force_agree_values_and_gradients(problem, tau, tau_alpha):
    z, others = problem
    results = []
    for form in ("factored", "dense", "brute"):
        anchor = z.clone().requires_grad_()
        if form == "factored":
            loss = muscle_loss(anchor, others, tau=tau, tau_alpha=tau_alpha)
        elif form == "dense":
            if z.shape[0] == 1:
                continue
            aggregated, log_alpha = build_dense_payload(others, tau_alpha=tau_alpha)
            loss = dense_muscle_loss(anchor, aggregated, log_alpha, tau=tau)
        else:
            loss = brute_force_muscle(anchor, others, tau=tau, tau_alpha=tau_alpha)
        (grad,) = torch.autograd.grad(loss, anchor)
        results.append((form, loss.detach(), grad))
    (_, ref_loss, ref_grad) = results[-1]
    for form, loss, grad in results[:-1]:
        assert torch.allclose(loss, ref_loss, atol=1e-9), form
        assert torch.allclose(grad, ref_grad, atol=1e-9), form


def test_p3_per_partner_tau_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    z, others = unit_rows(g, 3, 5), [unit_rows(g, 3, 5) for _ in range(3)]
    taus = [0.1, 0.5, 0.9]
    got = muscle_loss(z, others, tau=taus, tau_alpha=0.3)
    assert torch.allclose(got, brute_force_muscle(z, others, tau=taus, tau_alpha=0.3), atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(problems(max_batch=5), temperatures, temperatures, st.randoms(use_true_random=False))
def test_p4_invariant_to_partner_order_and_common_row_permutation(problem, tau, tau_alpha, rnd):
    z, others = problem
    base = muscle_loss(z, others, tau=tau, tau_alpha=tau_alpha)
    shuffled = list(others)
    rnd.shuffle(shuffled)
    assert torch.allclose(muscle_loss(z, shuffled, tau=tau, tau_alpha=tau_alpha), base, atol=1e-10)
    perm = list(range(z.shape[0]))
    rnd.shuffle(perm)
    permuted = muscle_loss(z[perm], [o[perm] for o in others], tau=tau, tau_alpha=tau_alpha)
    assert torch.allclose(permuted, base, atol=1e-10)


@pytest.mark.parametrize("tau", [0.01, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("tau_alpha", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("noise", [0.05, 1.0, 2.0])
def test_p5_finite_in_float32_for_small_temperatures(tau, tau_alpha, noise):
    g = torch.Generator().manual_seed(5)
    z64, others64 = correlated(g, batch=12, num_others=3, dim=32, noise=noise)
    z = z64.float().requires_grad_()
    loss = muscle_loss(z, [o.float() for o in others64], tau=tau, tau_alpha=tau_alpha)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()
    z64 = z64.clone().requires_grad_()
    exact = muscle_loss(z64, others64, tau=tau, tau_alpha=tau_alpha)
    exact.backward()
    assert loss.item() == pytest.approx(exact.item(), rel=1e-4, abs=1e-3)
    assert torch.allclose(
        z.grad.double(), z64.grad, atol=1e-3 * max(1.0, z64.grad.abs().max().item())
    )


def test_p5_underflow_falls_back_to_exact_log_space():
    """Tiny temperatures underflow the matmul path in float32; the fallback keeps it exact."""
    g = torch.Generator().manual_seed(0)
    z64, others64 = correlated(g, batch=8, num_others=3, dim=16, noise=2.0)
    objective = MuscleObjective([o.float() for o in others64], tau=0.01, tau_alpha=0.01)
    logits = torch.einsum("id,mjd->mij", z64.float(), objective.others) / 0.01
    _, total = objective._matmul_path(logits)
    assert (total < objective._min_reliable_sum).any(), "this case should exercise the fallback"
    expected = brute_force_muscle(z64, others64, tau=0.01, tau_alpha=0.01)
    assert objective(z64.float()).item() == pytest.approx(expected.item(), rel=1e-5)


def test_chunked_log_space_matches_unchunked_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    z, others = correlated(g, batch=6, num_others=3, dim=8, noise=0.3)
    grads = []
    for max_chunk in (10**9, 6**3, 1):  # one chunk, one anchor per chunk, and below B^M
        objective = MuscleObjective(others, tau=0.2, tau_alpha=0.2, max_chunk_elements=max_chunk)
        anchor = z.clone().requires_grad_()
        logits = torch.einsum("id,mjd->mij", anchor, objective.others) / 0.2
        value = objective._logspace_path(logits).sum()
        grads.append((value.detach(), torch.autograd.grad(value, anchor)[0]))
    for value, grad in grads[1:]:
        assert torch.allclose(value, grads[0][0], atol=1e-10)
        assert torch.allclose(grad, grads[0][1], atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(problems(max_batch=5), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_p6_non_negative(problem, tau, tau_alpha):
    z, others = problem
    assert muscle_loss(z, others, tau=tau, tau_alpha=tau_alpha).item() >= -1e-9


def test_p6_mutual_information_bound_smoke():
    """M log B - L estimates a lower bound on MI: high when views share a latent, ~0 if not."""
    batch, num_others, dim = 16, 3, 32
    bound = num_others * math.log(batch)
    g = torch.Generator().manual_seed(11)
    correlated_estimates, independent_estimates = [], []
    for _ in range(10):
        z, others = correlated(g, batch, num_others, dim, noise=0.3)
        correlated_estimates.append(bound - muscle_loss(z, others, tau=0.1, tau_alpha=0.5).item())
        z, others = unit_rows(g, batch, dim), [unit_rows(g, batch, dim) for _ in range(num_others)]
        independent_estimates.append(bound - muscle_loss(z, others, tau=0.1, tau_alpha=0.5).item())
    mean_correlated = sum(correlated_estimates) / 10
    mean_independent = sum(independent_estimates) / 10
    assert 0 < mean_correlated <= bound
    assert mean_correlated > mean_independent + 1.0
    assert mean_independent < 0.5


def test_pairwise_log_alpha_blocks_match_definition():
    g = torch.Generator().manual_seed(2)
    others = unit_rows(g, 4, 5, 3)
    blocks = pairwise_log_alpha(others, tau_alpha=0.25)
    assert blocks.shape == (6, 5, 5)
    assert torch.allclose(blocks[4], others[1] @ others[3].T / 0.25)  # pair (1, 3)
    assert torch.equal(
        pairwise_log_alpha(others, tau_alpha=math.inf), torch.zeros(6, 5, 5, dtype=others.dtype)
    )


def test_ensemble_loss_is_info_nce_against_normalised_mean():
    g = torch.Generator().manual_seed(4)
    z, others = unit_rows(g, 5, 6), [unit_rows(g, 5, 6) for _ in range(3)]
    mean = F.normalize(torch.stack(others).mean(0), dim=-1)
    assert torch.allclose(
        ensemble_loss(z, others, tau=0.2), naive_info_nce(z, mean, tau=0.2), atol=1e-10
    )


def test_bfloat16_inputs_give_float32_loss_close_to_float32():
    g = torch.Generator().manual_seed(6)
    z, others = correlated(g, batch=16, num_others=3, dim=64, noise=2.0)
    ref = muscle_loss(z.float(), [o.float() for o in others], tau=0.1, tau_alpha=0.1)
    assert ref.item() > 1.0
    z16 = F.normalize(z.bfloat16(), dim=-1).requires_grad_()
    got = muscle_loss(
        z16, [F.normalize(o.bfloat16(), dim=-1) for o in others], tau=0.1, tau_alpha=0.1
    )
    got.backward()
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=0.05)
    assert (
        z16.grad is not None
        and z16.grad.dtype == torch.bfloat16
        and torch.isfinite(z16.grad.float()).all()
    )


def test_dense_refuses_before_allocating():
    g = torch.Generator().manual_seed(7)
    others = unit_rows(g, 5, 32, 768, dtype=torch.float32)  # dense: 32^5 x 769 floats = 103 GB
    with pytest.raises(ValueError, match=r"103,2\d\d,\d{3},\d{3} bytes.*factored"):
        build_dense_payload(others, tau_alpha=0.1)
    with pytest.raises(ValueError, match="over the limit of 1,000"):
        build_dense_payload(unit_rows(g, 2, 4, 8), tau_alpha=0.1, max_bytes=1000)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 0.0}, "tau must be a finite positive number, got 0.0"),
        ({"tau": -1.0}, "tau must be"),
        ({"tau": float("nan")}, "tau must be"),
        ({"tau": [0.1, 0.2]}, "tau has 2 values but there are 3 other models"),
        ({"tau_alpha": 0.0}, "tau_alpha must be positive"),
        ({"tau_alpha": float("nan")}, "tau_alpha must be positive"),
    ],
)
def test_hyper_parameters_are_validated(kwargs, match):
    g = torch.Generator().manual_seed(8)
    z, others = unit_rows(g, 4, 3), [unit_rows(g, 4, 3) for _ in range(3)]
    args = {"tau": 0.1, "tau_alpha": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        muscle_loss(z, others, **args)


def test_shapes_and_norms_are_validated():
    g = torch.Generator().manual_seed(9)
    z, other = unit_rows(g, 4, 3), unit_rows(g, 4, 3)
    with pytest.raises(ValueError, match="M >= 1"):
        muscle_loss(z, [], tau=0.1, tau_alpha=0.1)
    with pytest.raises(ValueError, match=r"others\[1\] has shape \(5, 3\), expected \(4, 3\)"):
        muscle_loss(z, [other, unit_rows(g, 5, 3)], tau=0.1, tau_alpha=0.1)
    with pytest.raises(ValueError, match="z rows must be L2-normalised"):
        muscle_loss(2 * z, [other], tau=0.1, tau_alpha=0.1)
    with pytest.raises(ValueError, match="others rows must be L2-normalised"):
        pairwise_loss(z, [2 * other], tau=0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        muscle_loss(
            z,
            [other.masked_fill(torch.eye(4, 3, dtype=torch.bool), float("nan"))],
            tau=0.1,
            tau_alpha=0.1,
        )
    with pytest.raises(
        ValueError, match=r"log_alpha_pairs must have shape \(C\(M,2\), B, B\) = \(1, 4, 4\)"
    ):
        muscle_loss(z, [other, other], tau=0.1, tau_alpha=0.1, log_alpha_pairs=torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="z must have shape"):
        muscle_loss(z[0], [other], tau=0.1, tau_alpha=0.1)
