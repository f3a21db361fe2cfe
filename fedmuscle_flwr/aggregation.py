"""Server-side FedMuscle math: partner selection and every user's payload.

Plain PyTorch on tensors; runs on the best device present (CUDA when available). The
Flower strategy calls :func:`build_payloads` with the representations that arrived in a
round and sends each user its own :class:`UserPayload`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import torch
from torch import Tensor

from fedmuscle_flwr.devices import best_device
from fedmuscle_flwr.loss.dense import DEFAULT_MAX_DENSE_BYTES, build_dense_payload
from fedmuscle_flwr.payload import UserPayload

__all__ = [
    "SELECTIONS",
    "best_device",
    "build_payloads",
    "linear_cka",
    "select_partners",
    "select_relevant_partners",
]


#: Partner rules of :func:`build_payloads` (``partner-selection`` in the run config).
SELECTIONS = ("random", "relevance", "complement", "gain")


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


def linear_cka(grams: Tensor) -> Tensor:
    """Linear CKA between every pair of users from their (B, B) Gram matrices Z_n Z_n^T.

    ``grams`` is (N, B, B); the result is (N, N), symmetric, 1 on the diagonal, in [0, 1],
    invariant to rotations of each user's representation space (Kornblith et al., 2019).
    A user whose centred Gram is (numerically) zero, a constant Z, gets CKA 0 with
    everyone else.
    """
    batch = grams.shape[-1]
    # H K H with H = I - 11^T / B, as K minus its row and column means plus its mean.
    centred = grams - grams.mean(dim=-1, keepdim=True) - grams.mean(dim=-2, keepdim=True)
    centred = (centred + grams.mean(dim=(-2, -1), keepdim=True)).flatten(1)  # (N, B*B)
    hsic = centred @ centred.T
    norms = hsic.diagonal().clamp_min(0).sqrt()
    alive = norms > 1e-6 * batch  # unit rows: a real centred Gram has norm of order 1 to B
    denominator = norms[:, None] * norms[None, :]
    cka = torch.where(alive[:, None] & alive[None, :], hsic / denominator.clamp_min(1e-30), 0.0)
    return cka.fill_diagonal_(1.0).clamp(0.0, 1.0)


def select_relevant_partners(
    node_ids: Sequence[int],
    similarity: Tensor,
    num_partners: int,
    generator: torch.Generator,
    *,
    exploration: float = 0.25,
) -> dict[int, tuple[int, ...]]:
    """Pick M_eff partners per node, most similar first, with some exploration.

    ``similarity`` is (N, N) over ``sorted(node_ids)`` (e.g. :func:`linear_cka`). For each
    node and each of its M_eff slots, one uniform draw decides: below ``exploration`` the
    slot takes a random remaining candidate, otherwise the most similar remaining one (ties
    to the lower node id). Every slot consumes the same draws from ``generator``, so the
    choice depends only on the seed, the node ids, M and the similarities.
    """
    if num_partners < 1:
        raise ValueError(f"num_partners (M) must be >= 1, got {num_partners}")
    if not 0.0 <= exploration <= 1.0:
        raise ValueError(f"exploration must be in [0, 1], got {exploration!r}")
    ordered = sorted(set(node_ids))
    if len(ordered) != len(node_ids):
        raise ValueError(f"node ids must be unique, got {list(node_ids)}")
    if tuple(similarity.shape) != (len(ordered), len(ordered)):
        raise ValueError(
            f"similarity must be ({len(ordered)}, {len(ordered)}), got {tuple(similarity.shape)}"
        )
    scores = similarity.detach().double().cpu().clone()
    scores.fill_diagonal_(-math.inf)  # never one's own partner: ranked last, then dropped
    # Most similar first, ties to the lower node id (a stable sort of the negated scores).
    ranking = torch.sort(-scores, dim=1, stable=True).indices[:, :-1].tolist()
    effective = min(num_partners, len(ordered) - 1)
    selection: dict[int, tuple[int, ...]] = {}
    for row, node in enumerate(ordered):
        remaining = ranking[row]
        picks: list[int] = []
        for _ in range(effective):
            explore = float(torch.rand((), generator=generator)) < exploration
            slot = int(torch.randint(len(remaining), (), generator=generator))
            picks.append(remaining.pop(slot if explore else 0))
        selection[node] = tuple(ordered[p] for p in picks)
    return selection


def build_payloads(
    representations: Mapping[int, Tensor],
    *,
    num_partners: int,
    tau_alpha: float,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    dense: bool = False,
    max_dense_bytes: int | None = DEFAULT_MAX_DENSE_BYTES,
    selection: str = "random",
    exploration: float = 0.25,
    rescore: Callable[[Tensor], Tensor] | None = None,
) -> dict[int, UserPayload]:
    """Every user's payload from the representations that arrived this round.

    On ``device`` (default: :func:`best_device`) it computes the blocks of the Gram matrix
    of all stacked Z's that are needed, never the whole (N*B) x (N*B) matrix: the N
    diagonal blocks Z_n Z_n^T (relevance) and, for each user, the blocks Z_k Z_l^T of its
    partner pairs divided by ``tau_alpha`` (its log-alpha factors). Memory grows as
    N * B^2, not (N * B)^2. Users with no partner (only one arrival) are left out.

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
        Per-user limit of a dense payload (the strategy passes the transport's message
        limit, :data:`fedmuscle_flwr.wire.GRPC_MAX_MESSAGE_BYTES`); exceeding it raises
        before allocating (default: the loss module's 2 GiB memory guard; None: no limit).
    selection
        ``"random"`` (the paper) or ``"relevance"``: partners ranked by linear CKA of their
        representations on this batch (:func:`select_relevant_partners`), computed from the
        diagonal blocks Z_n Z_n^T; ``"complement"``: the least similar first (1 - CKA), the
        partners that see the batch most differently.
    exploration
        With ``"relevance"``, ``"complement"`` or ``"gain"``: the chance that a partner slot
        is random.
    rescore
        With ``"gain"``: maps the round's (N, N) CKA to the scores partners are ranked by
        (the strategy passes :func:`fedmuscle_flwr.partner_gain.gain_scores` over the run's
        history).
    """
    if not representations:
        return {}
    node_ids = sorted(representations)
    shapes = {tuple(representations[n].shape) for n in node_ids}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all representations must share one (B, d) shape, got {sorted(shapes)}")
    if math.isnan(tau_alpha) or tau_alpha <= 0:
        raise ValueError(f"tau_alpha must be positive (math.inf for alpha == 1), got {tau_alpha!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "gain" and rescore is None:
        raise ValueError("selection='gain' needs rescore (the scores from the run's history)")
    target = torch.device(device) if device is not None else best_device()
    stacked = torch.stack([representations[n] for n in node_ids]).to(target)  # (N, B, d)
    batch = stacked.shape[1]
    if selection != "random":
        own = torch.bmm(stacked, stacked.transpose(1, 2))  # the N diagonal blocks Z_n Z_n^T
        similarity = linear_cka(own.double())
        if selection == "complement":
            similarity = 1.0 - similarity
        elif rescore is not None and selection == "gain":
            similarity = rescore(similarity.cpu())
        chosen = select_relevant_partners(
            node_ids, similarity, num_partners, generator, exploration=exploration
        )
    else:
        chosen = select_partners(node_ids, num_partners, generator)
    position = {node: p for p, node in enumerate(node_ids)}
    served = [node for node in node_ids if chosen.get(node)]
    if not served:
        return {}
    # Every served user has M_eff partners: all payloads come from a few batched ops on
    # ``target`` and one copy to the CPU, not from per-user slices of a whole Gram.
    index = torch.tensor([[position[p] for p in chosen[n]] for n in served], device=target)
    pairs = list(combinations(range(index.shape[1]), 2))
    others_all = stacked[index]  # (U, M_eff, B, d)
    if pairs:
        # Only the blocks Z_k Z_l^T of each user's partner pairs: the whole Gram of N
        # users, (N B)^2 numbers, would not fit at a few hundred users.
        pair_blocks = [
            torch.bmm(stacked[index[:, k]], stacked[index[:, l]].transpose(1, 2)) for k, l in pairs
        ]
        log_alpha_all = torch.stack(pair_blocks, dim=1) / tau_alpha  # (U, C, B, B)
    else:
        log_alpha_all = stacked.new_zeros((len(served), 0, batch, batch))
    others_cpu, log_alpha_cpu = others_all.cpu(), log_alpha_all.cpu()
    payloads: dict[int, UserPayload] = {}
    for row, node in enumerate(served):
        aggregated = log_alpha = None
        if dense:
            aggregated, log_alpha = build_dense_payload(
                others_all[row],
                tau_alpha=tau_alpha,
                log_alpha_pairs=log_alpha_all[row],
                max_bytes=max_dense_bytes,
            )
        payloads[node] = UserPayload(
            partner_ids=chosen[node],
            others=others_cpu[row],
            log_alpha_pairs=log_alpha_cpu[row],
            aggregated=None if aggregated is None else aggregated.cpu(),
            log_alpha=None if log_alpha is None else log_alpha.cpu(),
        )
    return payloads
