"""Pairwise baselines: InfoNCE, the sum of InfoNCE over partners, and the ensemble loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmuscle_flwr.loss._checks import as_stack, check_tau, check_unit_rows, compute_dtype

__all__ = ["ensemble_loss", "info_nce", "pairwise_loss"]


def info_nce(z: Tensor, other: Tensor, *, tau: float) -> Tensor:
    """InfoNCE of anchor ``z`` against one other model, averaged over the B anchors.

    Row i of ``other`` is the positive of anchor i; the other B - 1 rows are negatives::

        L = -(1/B) sum_i log softmax_j(z_i . other_j / tau)[i]

    Shapes: z (B, d) with grad, other (B, d) constant. Returns a scalar.
    """
    return pairwise_loss(z, [other], tau=tau)


def pairwise_loss(
    z: Tensor, others: Sequence[Tensor] | Tensor, *, tau: float | Sequence[float]
) -> Tensor:
    """Sum over the M others of InfoNCE(z -> others[k], tau_k): the ``pairwise`` baseline.

    Equal to the Muscle loss with alpha == 1 (property P1 of ALGORITHM.md).

    Shapes: z (B, d) unit-norm rows with grad; others M x (B, d) unit-norm constants.
    ``tau`` is one float or one per partner. Returns a scalar in z's compute dtype.
    """
    stacked = as_stack(z, others)
    taus = check_tau(tau, stacked.shape[0])
    check_unit_rows("z", z)
    check_unit_rows("others", stacked)
    dtype = compute_dtype(z.dtype)
    scale = 1.0 / torch.tensor(taus, dtype=dtype, device=z.device)
    logits = torch.einsum("id,mjd->mij", z.to(dtype), stacked.to(dtype)) * scale[:, None, None]
    num_others, batch, _ = logits.shape
    targets = torch.arange(batch, device=z.device).repeat(num_others)
    per_anchor = F.cross_entropy(logits.reshape(-1, batch), targets, reduction="none")
    return per_anchor.view(num_others, batch).mean(dim=1).sum()


def ensemble_loss(z: Tensor, others: Sequence[Tensor] | Tensor, *, tau: float) -> Tensor:
    """InfoNCE of ``z`` against the others' mean representation (CreamFL-like baseline).

    The mean of the M partners' rows is L2-normalised again so that ``tau`` keeps the
    meaning it has in the other losses.

    Shapes: z (B, d) unit-norm rows with grad; others M x (B, d) unit-norm constants.
    """
    stacked = as_stack(z, others)
    check_unit_rows("others", stacked)
    mean = F.normalize(stacked.to(compute_dtype(z.dtype)).mean(dim=0), dim=-1)
    return pairwise_loss(z, mean.unsqueeze(0), tau=tau)
