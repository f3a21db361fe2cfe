"""The dense, paper-literal form: S_n (B^M x d) and log alpha_n (B^M), and the loss from them.

Kept for validation and comparison benchmarks. Its payload grows as B^M, so building it
refuses, before allocating anything, when it would exceed a byte limit (by default the
largest message Flower's gRPC transport accepts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmuscle_flwr.loss._checks import (
    as_stack,
    check_log_alpha_pairs,
    check_tau,
    check_tau_alpha,
    check_unit_rows,
    compute_dtype,
)
from fedmuscle_flwr.loss.muscle import _log_partner_weights, pairwise_log_alpha

__all__ = [
    "DEFAULT_MAX_DENSE_BYTES",
    "build_dense_payload",
    "dense_muscle_loss",
    "dense_payload_bytes",
    "dense_payload_numel",
    "factored_payload_numel",
]


#: A memory guard, not a transport limit: dense payloads above 2 GiB are refused unless a
#: caller raises ``max_bytes`` (the paper's B=32, M=5 would need 103 GB).
DEFAULT_MAX_DENSE_BYTES = 2**31


def dense_payload_numel(batch: int, num_others: int, dim: int) -> int:
    """Numbers in a dense payload: S_n (B^M x d) plus log alpha_n (B^M)."""
    return batch**num_others * (dim + 1)


def factored_payload_numel(batch: int, num_others: int, dim: int) -> int:
    """Numbers in a factored payload: M*B*d partner rows plus C(M,2)*B^2 log-alpha factors."""
    return num_others * batch * dim + math.comb(num_others, 2) * batch * batch


def dense_payload_bytes(batch: int, num_others: int, dim: int, dtype: torch.dtype) -> int:
    """Bytes of a dense payload in ``dtype``."""
    return dense_payload_numel(batch, num_others, dim) * torch.empty((), dtype=dtype).element_size()


def build_dense_payload(
    others: Sequence[Tensor] | Tensor,
    *,
    tau_alpha: float,
    log_alpha_pairs: Tensor | None = None,
    max_bytes: int | None = DEFAULT_MAX_DENSE_BYTES,
) -> tuple[Tensor, Tensor]:
    """Build S_n[j] = sum_k Z_k[j_k] and log alpha_n[j] = sum_{k<l} A_kl[j_k, j_l].

    Tuples are flattened in row-major order: j -> sum_k j_k * B^(M-1-k).

    Shapes: others (M, B, d) -> aggregated (B^M, d), log_alpha (B^M,).

    Raises
    ------
    ValueError
        If the payload would exceed ``max_bytes`` (checked before allocating; None: no
        limit). Over the wire the strategy passes the transport's limit,
        :data:`fedmuscle_flwr.wire.GRPC_MAX_MESSAGE_BYTES`.
    """
    stacked = torch.stack(list(others)) if not isinstance(others, Tensor) else others
    if stacked.ndim != 3 or stacked.shape[0] == 0:
        raise ValueError(
            f"others must have shape (M, B, d) with M >= 1, got {tuple(stacked.shape)}"
        )
    num_others, batch, dim = stacked.shape
    needed = dense_payload_bytes(batch, num_others, dim, stacked.dtype)
    if max_bytes is not None and needed > max_bytes:
        raise ValueError(
            f"the dense payload for B={batch}, M={num_others}, d={dim} would take "
            f"{needed:,} bytes, over the limit of {max_bytes:,}; use the factored payload "
            "(payload='factored'), or a smaller public batch B or number of partners M"
        )
    check_unit_rows("others", stacked)
    if log_alpha_pairs is None:
        log_alpha_pairs = pairwise_log_alpha(stacked, tau_alpha=tau_alpha)
    else:
        check_tau_alpha(tau_alpha)
        check_log_alpha_pairs(log_alpha_pairs, num_others, batch)
    aggregated = stacked.new_zeros((batch,) * num_others + (dim,))
    for k in range(num_others):
        shape = [1] * num_others + [dim]
        shape[k] = batch
        aggregated = aggregated + stacked[k].reshape(shape)
    log_alpha = _log_partner_weights(log_alpha_pairs.to(stacked.dtype), num_others, batch)
    return aggregated.reshape(-1, dim), log_alpha.reshape(-1)


def dense_muscle_loss(z: Tensor, aggregated: Tensor, log_alpha: Tensor, *, tau: float) -> Tensor:
    """The Muscle loss from a dense payload, as the paper writes it.

    L = -(1/B) sum_i log( alpha[diag i] exp(z_i . S[diag i] / tau)
                          / sum_j alpha[j] exp(z_i . S[j] / tau) )

    Shapes: z (B, d) unit-norm with grad; aggregated (B^M, d); log_alpha (B^M,).
    """
    if z.ndim != 2:
        raise ValueError(f"z must have shape (B, d), got {tuple(z.shape)}")
    batch, dim = z.shape
    (tau_value,) = check_tau(tau, 1)
    num_others = _tuple_order(aggregated.shape[0], batch)
    if aggregated.shape != (batch**num_others, dim) or log_alpha.shape != (batch**num_others,):
        raise ValueError(
            f"aggregated must be (B^M, d) and log_alpha (B^M,) for B={batch}, d={dim}; got "
            f"{tuple(aggregated.shape)} and {tuple(log_alpha.shape)}"
        )
    check_unit_rows("z", z)
    as_stack(z, z.unsqueeze(0))  # dtype and shape checks of z
    dtype = compute_dtype(z.dtype)
    logits = z.to(dtype) @ aggregated.to(dtype).T / tau_value + log_alpha.to(dtype)
    stride = sum(batch**p for p in range(num_others))  # flat index of (i, ..., i) is i * stride
    positives = torch.arange(batch, device=z.device) * stride
    return F.cross_entropy(logits, positives)


def _tuple_order(num_tuples: int, batch: int) -> int:
    """M such that B^M == num_tuples, or a ValueError."""
    if batch == 1:
        raise ValueError("the dense form needs B >= 2 to infer M from B^M")
    num_others = max(1, round(math.log(num_tuples, batch)))
    if batch**num_others != num_tuples:
        raise ValueError(f"{num_tuples} tuples is not a power of the batch size {batch}")
    return num_others
