"""What one user receives for its contrastive step: the neutral type both apps share.

The server builds it (:mod:`fedmuscle_flwr.aggregation`), the wire carries it
(:mod:`fedmuscle_flwr.wire`), the client's algorithm reads it
(:mod:`fedmuscle_flwr.algorithms`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["UserPayload"]


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
    teacher
        With ``distill-weight`` > 0 (*beyond the paper*): the mean class probabilities (B, K)
        of the users that share this user's label space, on the same public batch; None when
        no such user replied (:mod:`fedmuscle_flwr.loss.distillation`).
    teacher_kind
        ``"classes"``: the teacher's rows are class probabilities; ``"presence"``: they are
        segmentation peers' image-level presence of each class, each in [0, 1]
        (``presence-teacher = "segmentation"``).
    """

    partner_ids: tuple[int, ...]
    others: Tensor
    log_alpha_pairs: Tensor
    aggregated: Tensor | None = None
    log_alpha: Tensor | None = None
    teacher: Tensor | None = None
    teacher_kind: str = "classes"

    @property
    def num_partners(self) -> int:
        """M_eff, the number of partners this user contrasts against."""
        return len(self.partner_ids)

    @property
    def is_dense(self) -> bool:
        """Whether the dense S_n / alpha_n form is attached."""
        return self.aggregated is not None

    def numel(self) -> int:
        """Numbers this payload carries (factored parts; dense parts and teacher when present)."""
        parts = [self.others, self.log_alpha_pairs, self.aggregated, self.log_alpha, self.teacher]
        return sum(p.numel() for p in parts if p is not None)
