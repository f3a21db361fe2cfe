"""The Muscle loss from the factored payload: exact, without the B^M x d matrix S_n.

Notation (ALGORITHM.md): anchor rows z (B, d); partners Z_1..Z_M (B, d); a candidate is a
tuple j = (j_1..j_M) in [B]^M. With G_k = z Z_k^T / tau_k (B, B) and the pairwise factors
A_kl = Z_k Z_l^T / tau_alpha (k < l), the log partner weight of a tuple is
log W[j] = sum_{k<l} A_kl[j_k, j_l], and for anchor i::

    L_i = logsumexp_j (log W[j] + sum_k G_k[i, j_k])  -  (log W[diag i] + sum_k G_k[i, i])

W does not depend on the anchor, so the normaliser of every anchor is one contraction of
the (B,)*M tensor W with the M matrices exp(G_k): matrix products after max-shifting
(the *matmul path*). Where that would lose precision in the compute dtype (small tau or
tau_alpha pushes mass into underflow), those anchors are recomputed by an exact chunked
logsumexp over all B^M tuples (the *log-space path*).

Memory. The matmul path holds W and one (c, B^(M-1)) product per chunk of c anchors; with
autograd, about 2 * B^M + 2 * B^M / B numbers of the compute dtype in all. The log-space
path holds ``chunk * B^M`` numbers, with ``chunk = max(1, max_chunk_elements // B^M)``,
and is checkpointed so that backward recomputes one chunk at a time. Time is O(B^(M+1)).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from fedmuscle_flwr.loss._checks import (
    as_stack,
    check_log_alpha_pairs,
    check_tau,
    check_tau_alpha,
    check_unit_rows,
    compute_dtype,
)

__all__ = ["DEFAULT_MAX_CHUNK_ELEMENTS", "MuscleObjective", "muscle_loss", "pairwise_log_alpha"]

#: Default bound on the numbers one chunk of the log-space path holds (2^25: 128 MiB in fp32).
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 25


def pairwise_log_alpha(others: Tensor, *, tau_alpha: float) -> Tensor:
    """The pairwise log-alpha factors A_kl = Z_k Z_l^T / tau_alpha for k < l.

    Shapes: others (M, B, d) -> (C(M, 2), B, B), pairs in ``itertools.combinations`` order.
    ``tau_alpha = math.inf`` gives zeros (alpha == 1).
    """
    tau_alpha = check_tau_alpha(tau_alpha)
    num_others, batch, _ = others.shape
    pairs = list(combinations(range(num_others), 2))
    if not pairs:
        return others.new_zeros((0, batch, batch))
    first = others[[k for k, _ in pairs]]
    second = others[[l for _, l in pairs]]
    return torch.bmm(first, second.transpose(1, 2)) / tau_alpha


def _log_partner_weights(log_alpha_pairs: Tensor, num_others: int, batch: int) -> Tensor:
    """Log W[j] = sum_{k<l} A_kl[j_k, j_l] as a (B,)*M tensor.

    Built one axis at a time: appending axis l adds sum_{k<l} A_kl[j_k, j_l], whose part for
    k >= 1 is first summed on the B^l-sized axes 1..l, so that only two passes touch the
    full B^(l+1) tensor (an out-of-place add, then the k = 0 block in place).
    """
    index = {pair: p for p, pair in enumerate(combinations(range(num_others), 2))}
    log_w = log_alpha_pairs.new_zeros((batch,))
    for l in range(1, num_others):
        star = log_alpha_pairs.new_zeros((1,) * (l - 1) + (batch,))  # axes 1..l
        for k in range(1, l):
            shape = [1] * l
            shape[k - 1] = shape[l - 1] = batch
            star = star + log_alpha_pairs[index[(k, l)]].reshape(shape)
        first = log_alpha_pairs[index[(0, l)]].reshape((batch,) + (1,) * (l - 1) + (batch,))
        log_w = (log_w.unsqueeze(-1) + star.unsqueeze(0)).add_(first)
    return log_w


def _partner_weights(log_alpha_pairs: Tensor, num_others: int, batch: int) -> tuple[Tensor, Tensor]:
    """W = exp(log W - shift) as a (B,)*M tensor, and the shift.

    Built in exp space like :func:`_log_partner_weights`, each small factor shifted by its
    own max, so the full B^M tensor is touched by two passes only. The shift is an upper
    bound of max(log W): W <= 1 never overflows; if it is loose enough for an anchor's
    mass to underflow, the reliability check sends that anchor to the exact fallback.
    """
    index = {pair: p for p, pair in enumerate(combinations(range(num_others), 2))}
    weights = log_alpha_pairs.new_ones((batch,))
    shift = log_alpha_pairs.new_zeros(())
    for l in range(1, num_others):
        star = log_alpha_pairs.new_zeros((1,) * (l - 1) + (batch,))  # axes 1..l, log space
        for k in range(1, l):
            shape = [1] * l
            shape[k - 1] = shape[l - 1] = batch
            star = star + log_alpha_pairs[index[(k, l)]].reshape(shape)
        first = log_alpha_pairs[index[(0, l)]]
        star_max, first_max = star.max(), first.max()
        shift = shift + star_max + first_max
        first_w = torch.exp(first - first_max).reshape((batch,) + (1,) * (l - 1) + (batch,))
        weights = (weights.unsqueeze(-1) * torch.exp(star - star_max).unsqueeze(0)).mul_(first_w)
    return weights, shift


class MuscleObjective:
    """The Muscle loss of one user for one round's partners, ready to apply to z many times.

    The partner-only work (log W, its max-shifted exponent, the positive tuples' weights)
    is done once here; each call then costs two small GEMMs plus the contraction.

    Parameters
    ----------
    others
        The M partners' representations, (M, B, d) or a sequence of (B, d); unit-norm rows.
    log_alpha_pairs
        The (C(M, 2), B, B) factors from the server; computed from ``others`` when None.
    tau
        Temperature of the anchor-partner similarities; one float, or one per partner.
    tau_alpha
        Temperature of alpha, used only when ``log_alpha_pairs`` is None.
    max_chunk_elements
        Bound on the numbers one chunk of the log-space fallback holds.
    """

    def __init__(
        self,
        others: Sequence[Tensor] | Tensor,
        log_alpha_pairs: Tensor | None = None,
        *,
        tau: float | Sequence[float],
        tau_alpha: float | None = None,
        max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    ) -> None:
        stacked = torch.stack(list(others)) if not isinstance(others, Tensor) else others
        if stacked.ndim != 3 or stacked.shape[0] == 0:
            raise ValueError(
                f"others must have shape (M, B, d) with M >= 1, got {tuple(stacked.shape)}"
            )
        check_unit_rows("others", stacked)
        if max_chunk_elements < 1:
            raise ValueError(f"max_chunk_elements must be >= 1, got {max_chunk_elements}")
        self.num_others, self.batch, self.dim = stacked.shape
        self.taus = check_tau(tau, self.num_others)
        self.dtype = compute_dtype(stacked.dtype)
        self.others = stacked.detach().to(self.dtype)
        if log_alpha_pairs is None:
            if tau_alpha is None:
                raise ValueError("give either log_alpha_pairs or tau_alpha")
            log_alpha_pairs = pairwise_log_alpha(self.others, tau_alpha=tau_alpha)
        check_log_alpha_pairs(log_alpha_pairs, self.num_others, self.batch)
        self.max_chunk_elements = int(max_chunk_elements)
        with torch.no_grad():
            self.pairs = log_alpha_pairs.detach().to(device=self.others.device, dtype=self.dtype)
            self.log_w_diag = self.pairs.diagonal(dim1=1, dim2=2).sum(dim=0)  # (B,)
            self.w, self.log_w_max = _partner_weights(self.pairs, self.num_others, self.batch)
        self._log_w: Tensor | None = None
        # Below this sum, underflowed terms could matter at the dtype's precision.
        finfo = torch.finfo(self.dtype)
        self._min_reliable_sum = self.w.numel() * finfo.tiny / finfo.eps

    @property
    def log_w(self) -> Tensor:
        """Log W, rebuilt on first use (only the exact log-space fallback needs it)."""
        if self._log_w is None:
            self._log_w = _log_partner_weights(self.pairs, self.num_others, self.batch)
        return self._log_w

    def __call__(self, z: Tensor) -> Tensor:
        """Mean Muscle loss over the B anchors of ``z`` (B, d); differentiable in z."""
        if tuple(z.shape) != (self.batch, self.dim):
            raise ValueError(f"z must have shape {(self.batch, self.dim)}, got {tuple(z.shape)}")
        check_unit_rows("z", z)
        scale = 1.0 / torch.tensor(self.taus, dtype=self.dtype, device=z.device)
        logits = torch.einsum("id,mjd->mij", z.to(self.dtype), self.others) * scale[:, None, None]
        positive = self.log_w_diag + logits.diagonal(dim1=1, dim2=2).sum(dim=0)
        return (self.log_normaliser(logits) - positive).mean()

    def log_normaliser(self, logits: Tensor) -> Tensor:
        """Log sum_j W[j] exp(sum_k G_k[i, j_k]) for each anchor i; logits G is (M, B, B)."""
        log_norm, total = self._matmul_path(logits)
        with torch.no_grad():
            unreliable = ~(total >= self._min_reliable_sum) | ~torch.isfinite(total)
        if bool(unreliable.any()):
            rows = unreliable.nonzero().squeeze(1)
            exact = self._logspace_path(logits[:, rows])
            log_norm = log_norm.index_put((rows,), exact)
        return log_norm

    def _matmul_path(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Contract W with exp(G_k - rowmax) by GEMM then batched mat-vec, one axis at a time."""
        shift = logits.detach().amax(dim=2, keepdim=True)  # (M, B, 1)
        factors = torch.exp(logits - shift)
        partial = factors[0] @ self.w.reshape(self.batch, -1)  # (B, B^(M-1))
        for factor in factors[1:]:
            partial = torch.bmm(factor.unsqueeze(1), partial.view(self.batch, self.batch, -1))
            partial = partial.squeeze(1)
        total = partial.squeeze(1)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        return self.log_w_max + shift.sum(dim=0).squeeze(1) + torch.log(safe), total.detach()

    def _logspace_path(self, logits: Tensor) -> Tensor:
        """Exact logsumexp over all B^M tuples for the anchors in ``logits`` (M, c, B)."""
        rows = logits.shape[1]
        chunk = max(1, self.max_chunk_elements // self.log_w.numel())
        parts = []
        for start in range(0, rows, chunk):
            block = logits[:, start : start + chunk]
            if block.requires_grad:
                parts.append(checkpoint(self._logsumexp_tuples, block, use_reentrant=False))
            else:
                parts.append(self._logsumexp_tuples(block))
        return torch.cat(parts)

    def _logsumexp_tuples(self, logits: Tensor) -> Tensor:
        rows = logits.shape[1]
        scores = self.log_w.unsqueeze(0)
        for k in range(self.num_others):
            shape = [rows] + [1] * self.num_others
            shape[1 + k] = self.batch
            scores = scores + logits[k].reshape(shape)
        return scores.reshape(rows, -1).logsumexp(dim=1)


def muscle_loss(
    z: Tensor,
    others: Sequence[Tensor] | Tensor,
    *,
    tau: float | Sequence[float],
    tau_alpha: float,
    log_alpha_pairs: Tensor | None = None,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> Tensor:
    """The exact Muscle loss of ALGORITHM.md, from the factored form.

    Parameters
    ----------
    z
        The anchor model's L2-normalised representations of the public batch, (B, d), with
        gradients.
    others
        The M selected other models' representations, M x (B, d) (or (M, B, d)),
        L2-normalised; constants (no gradient flows into them).
    tau
        Temperature of the anchor-candidate score; one float or one per partner.
    tau_alpha
        Temperature of alpha; ``math.inf`` gives alpha == 1 (the pairwise loss).
    log_alpha_pairs
        The server's (C(M, 2), B, B) pairwise factors; computed from ``others`` if None.
    max_chunk_elements
        Memory bound of the exact log-space fallback (numbers per chunk).

    Returns
    -------
    Tensor
        Scalar: mean over the B anchors; float32 for bfloat16/float16 inputs.
    """
    stacked = as_stack(z, others)
    check_tau_alpha(tau_alpha)
    objective = MuscleObjective(
        stacked,
        log_alpha_pairs,
        tau=tau,
        tau_alpha=tau_alpha,
        max_chunk_elements=max_chunk_elements,
    )
    return objective(z)
