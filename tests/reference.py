"""Naive references written straight from ALGORITHM.md, for tests: loops over all tuples."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def brute_force_muscle(
    z: Tensor, others: list[Tensor], *, tau: float | list[float], tau_alpha: float
) -> Tensor:
    """L_Muscle by enumerating every tuple j in [B]^M, one score at a time."""
    batch, num_others = z.shape[0], len(others)
    taus = tau if isinstance(tau, list) else [tau] * num_others
    losses = []
    for i in range(batch):
        scores, positive = [], None
        for j in itertools.product(range(batch), repeat=num_others):
            log_alpha = (
                sum(
                    (
                        others[k][j[k]] @ others[l][j[l]]
                        for k, l in itertools.combinations(range(num_others), 2)
                    ),
                    start=torch.zeros((), dtype=z.dtype),
                )
                / tau_alpha
            )
            s = sum(z[i] @ others[k][j[k]] / taus[k] for k in range(num_others))
            scores.append(log_alpha + s)
            if all(jk == i for jk in j):
                positive = log_alpha + s
        assert positive is not None
        losses.append(torch.logsumexp(torch.stack(scores), dim=0) - positive)
    return torch.stack(losses).mean()


def naive_info_nce(z: Tensor, other: Tensor, *, tau: float) -> Tensor:
    """InfoNCE with explicit loops over anchors and candidates."""
    batch = z.shape[0]
    total = torch.zeros((), dtype=z.dtype)
    for i in range(batch):
        logits = torch.stack([z[i] @ other[j] / tau for j in range(batch)])
        total = total - torch.log_softmax(logits, dim=0)[i]
    return total / batch
