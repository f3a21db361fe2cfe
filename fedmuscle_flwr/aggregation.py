"""Server-side FedMuscle math: partner selection and every user's payload from one Gram.

Plain PyTorch on tensors; runs on the best device present (CUDA when available). The
Flower strategy calls :func:`build_payloads` with the representations that arrived in a
round and sends each user its own :class:`UserPayload`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import Tensor

from fedmuscle_flwr.loss import GRPC_MAX_MESSAGE_BYTES, build_dense_payload

__all__ = ["UserPayload", "best_device", "build_payloads", "select_partners"]


@dataclass(frozen=True)
class UserPayload:
    """What one user receives for its contrastive step.

    Attributes
    ----------
    partner_ids
        Node ids of the M_eff selected partners, in the order of ``others``.
    others
        The partners' representations, (M_eff, B, d).
    log_alpha_pairs
        Pairwise factors Z_k Z_l^T / tau_alpha for k < l, (C(M_eff, 2), B, B).
    aggregated, log_alpha
        The dense, paper-literal form S_n (B^M, d) and log alpha_n (B^M,), only when asked
        for; None otherwise.
    """

    partner_ids: tuple[int, ...]
    others: Tensor
    log_alpha_pairs: Tensor
    aggregated: Tensor | None = None
    log_alpha: Tensor | None = None

    @property
    def num_partners(self) -> int:
        """M_eff, the number of partners this user contrasts against."""
        return len(self.partner_ids)

    @property
    def is_dense(self) -> bool:
        """Whether the dense S_n / alpha_n form is attached."""
        return self.aggregated is not None

    def numel(self) -> int:
        """Numbers this payload carries (factored parts, plus dense parts when present)."""
        parts = [self.others, self.log_alpha_pairs, self.aggregated, self.log_alpha]
        return sum(p.numel() for p in parts if p is not None)


def best_device() -> torch.device:
    """CUDA when available, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def select_partners(
    node_ids: Sequence[int], num_partners: int, generator: torch.Generator
) -> dict[int, tuple[int, ...]]:
    """Pick M_eff = min(M, N - 1) partners for every node, without replacement.

    Nodes are visited in sorted order and draws come from ``generator`` (a CPU generator),
    so the selection depends only on the seed, the set of node ids and M. A node with no
    possible partner (N == 1) gets an empty tuple.
    """
    if num_partners < 1:
        raise ValueError(f"num_partners (M) must be >= 1, got {num_partners}")
    ordered = sorted(set(node_ids))
    if len(ordered) != len(node_ids):
        raise ValueError(f"node ids must be unique, got {list(node_ids)}")
    effective = min(num_partners, len(ordered) - 1)
    selection: dict[int, tuple[int, ...]] = {}
    for node in ordered:
        candidates = [other for other in ordered if other != node]
        picks = torch.randperm(len(candidates), generator=generator)[:effective].tolist()
        selection[node] = tuple(candidates[p] for p in picks)
    return selection


def build_payloads(
    representations: Mapping[int, Tensor],
    *,
    num_partners: int,
    tau_alpha: float,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    dense: bool = False,
    max_dense_bytes: int = GRPC_MAX_MESSAGE_BYTES,
) -> dict[int, UserPayload]:
    """Every user's payload from the representations that arrived this round.

    One Gram matrix of all stacked Z's, (N*B) x (N*B), is computed on ``device`` (default:
    :func:`best_device`); each user's pairwise log-alpha blocks are slices of it divided by
    ``tau_alpha``. Users with no partner (only one arrival) are left out of the result.

    Parameters
    ----------
    representations
        ``{node_id: Z_n}`` with every Z_n of the same shape (B, d), validated on arrival.
    num_partners
        M; each user gets M_eff = min(M, N - 1) partners.
    tau_alpha
        Temperature of alpha; ``math.inf`` gives zero log-alpha blocks (alpha == 1).
    generator
        Seeded CPU generator for the partner selection.
    device
        Where the Gram matrix is computed. Payload tensors come back on the CPU.
    dense
        Also attach the dense S_n / alpha_n (for validation and comparison).
    max_dense_bytes
        Per-user limit of a dense payload; exceeding it raises before allocating.
    """
    if not representations:
        return {}
    node_ids = sorted(representations)
    shapes = {tuple(representations[n].shape) for n in node_ids}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all representations must share one (B, d) shape, got {sorted(shapes)}")
    if math.isnan(tau_alpha) or tau_alpha <= 0:
        raise ValueError(f"tau_alpha must be positive (math.inf for alpha == 1), got {tau_alpha!r}")
    selection = select_partners(node_ids, num_partners, generator)
    target = torch.device(device) if device is not None else best_device()
    stacked = torch.stack([representations[n] for n in node_ids]).to(target)  # (N, B, d)
    num_nodes, batch, _ = stacked.shape
    flat = stacked.reshape(num_nodes * batch, -1)
    blocks = (flat @ flat.T).view(num_nodes, batch, num_nodes, batch).transpose(1, 2)
    position = {node: p for p, node in enumerate(node_ids)}
    payloads: dict[int, UserPayload] = {}
    for node, partners in selection.items():
        if not partners:
            continue
        index = torch.tensor([position[p] for p in partners], device=target)
        pairs = list(combinations(range(len(partners)), 2))
        if pairs:
            first = index[[k for k, _ in pairs]]
            second = index[[l for _, l in pairs]]
            log_alpha_pairs = blocks[first, second] / tau_alpha
        else:
            log_alpha_pairs = stacked.new_zeros((0, batch, batch))
        others = stacked[index]
        aggregated = log_alpha = None
        if dense:
            aggregated, log_alpha = build_dense_payload(
                others,
                tau_alpha=tau_alpha,
                log_alpha_pairs=log_alpha_pairs,
                max_bytes=max_dense_bytes,
            )
        payloads[node] = UserPayload(
            partner_ids=partners,
            others=others.cpu(),
            log_alpha_pairs=log_alpha_pairs.cpu(),
            aggregated=None if aggregated is None else aggregated.cpu(),
            log_alpha=None if log_alpha is None else log_alpha.cpu(),
        )
    return payloads
