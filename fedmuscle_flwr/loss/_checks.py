"""Validation of loss inputs and hyper-parameters, shared by every loss form."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "as_stack",
    "check_log_alpha_pairs",
    "check_tau",
    "check_tau_alpha",
    "check_unit_rows",
    "compute_dtype",
]

# Row-norm tolerance by dtype: bfloat16 keeps 8 bits of mantissa.
_UNIT_NORM_ATOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3}
_DEFAULT_UNIT_NORM_ATOL = 1e-3


def check_tau(tau: float | Sequence[float], num_others: int) -> tuple[float, ...]:
    """Return one temperature per other model, validated.

    ``tau`` is one positive float (the paper's default) or ``num_others`` floats (one
    ``tau_{n,m}`` per partner, to soften alignment with weakly related tasks).
    """
    taus = (float(tau),) * num_others if isinstance(tau, int | float) else tuple(map(float, tau))
    if len(taus) != num_others:
        raise ValueError(f"tau has {len(taus)} values but there are {num_others} other models")
    for t in taus:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"tau must be a finite positive number, got {t!r}")
    return taus


def check_tau_alpha(tau_alpha: float) -> float:
    """Validate ``tau_alpha`` > 0; ``math.inf`` is allowed and means alpha == 1."""
    tau_alpha = float(tau_alpha)
    if math.isnan(tau_alpha) or tau_alpha <= 0:
        raise ValueError(f"tau_alpha must be positive (math.inf for alpha == 1), got {tau_alpha!r}")
    return tau_alpha


def as_stack(z: Tensor, others: Sequence[Tensor] | Tensor) -> Tensor:
    """Stack the others' matrices into one (M, B, d) tensor after checking shapes.

    Parameters
    ----------
    z
        The anchor's representations, shape (B, d).
    others
        M matrices of shape (B, d), as a sequence or one (M, B, d) tensor.
    """
    if z.ndim != 2:
        raise ValueError(f"z must have shape (B, d), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    if isinstance(others, Tensor):
        stacked = others
    else:
        if len(others) == 0:
            raise ValueError("others is empty: the Muscle loss needs M >= 1 other models")
        for k, other in enumerate(others):
            if tuple(other.shape) != tuple(z.shape):
                raise ValueError(
                    f"others[{k}] has shape {tuple(other.shape)}, expected {tuple(z.shape)} "
                    "(same public batch and dimension as z)"
                )
        stacked = torch.stack([o.to(device=z.device) for o in others])
    if stacked.ndim != 3 or tuple(stacked.shape[1:]) != tuple(z.shape):
        raise ValueError(
            f"others must have shape (M, B, d) = (M, {z.shape[0]}, {z.shape[1]}), "
            f"got {tuple(stacked.shape)}"
        )
    if stacked.shape[0] == 0:
        raise ValueError("others is empty: the Muscle loss needs M >= 1 other models")
    return stacked.detach()


def check_unit_rows(name: str, x: Tensor) -> None:
    """Raise a ValueError when a row of ``x`` is not finite or not L2-unit-norm."""
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} holds NaN or inf values")
        norms = torch.linalg.vector_norm(x.float(), dim=-1)
        atol = _UNIT_NORM_ATOL.get(x.dtype, _DEFAULT_UNIT_NORM_ATOL)
        worst = (norms - 1).abs().max().item() if norms.numel() else 0.0
        if worst > atol:
            raise ValueError(
                f"{name} rows must be L2-normalised (|norm - 1| <= {atol}); the worst row is "
                f"off by {worst:.3g}: apply torch.nn.functional.normalize first"
            )


def check_log_alpha_pairs(log_alpha_pairs: Tensor, num_others: int, batch: int) -> None:
    """Check the pairwise log-alpha blocks: shape (C(M, 2), B, B), finite."""
    expected = (math.comb(num_others, 2), batch, batch)
    if tuple(log_alpha_pairs.shape) != expected:
        raise ValueError(
            f"log_alpha_pairs must have shape (C(M,2), B, B) = {expected}, "
            f"got {tuple(log_alpha_pairs.shape)}"
        )
    if not torch.isfinite(log_alpha_pairs).all():
        raise ValueError("log_alpha_pairs holds NaN or inf values")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the loss is computed in: float32 at least (bfloat16/float16 are upcast)."""
    return torch.promote_types(dtype, torch.float32)
