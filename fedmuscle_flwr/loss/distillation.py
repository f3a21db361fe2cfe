"""Distillation of class predictions on the public batch (*beyond the paper*).

Users whose tasks share one label space (the same class names, in the same order: two
image classifiers of one task, or an image and a text classifier of the same classes)
teach each other on the public batch: each sends its class probabilities at temperature
T beside its Z, the server forms its peers' consensus (FedMD-style: their mean, or each
peer weighted per sample by its certainty, ``distill-teacher``), and the user's
collaborative step adds the distillation loss

    L_kd = T^2 * mean_i w_i KL(teacher_i || softmax(logits_i / T))

(w_i = 1, or the teacher's certainty on row i with ``distill-row-weight = "certainty"``)

to lambda * L_muscle. A label space is named by :func:`label_space_key`, so the server
never sees the class names themselves.

A multi-label user whose classes carry the same names (``distill-presence``) sends no
predictions but takes the same consensus as a lower bound on presence: a single-label
classifier's class is in the image, so P(class k present) >= P(label = k), and
:func:`presence_loss` pulls each sigmoid up to that bound where it is below and leaves it
alone above. A segmentation user of the same classes (plus background) can instead be
the teacher (``presence-teacher = "segmentation"``): it sends :func:`image_presence`, the
largest probability of each class over its pixels, an estimate of presence rather than a
bound, and :func:`presence_distillation_loss` pulls each sigmoid towards it both ways.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "class_probabilities",
    "distillation_loss",
    "image_presence",
    "label_space_key",
    "presence_distillation_loss",
    "presence_loss",
    "teacher_by_confidence",
    "teacher_certainty",
    "teacher_mean",
]


def label_space_key(names: Sequence[str]) -> str:
    """A short, order-sensitive key of a label space: ``"<K>:<digest of the names>"``."""
    if len(names) < 2:
        raise ValueError(f"a label space needs at least 2 classes, got {list(names)!r}")
    digest = hashlib.sha256("\x1f".join(names).encode()).hexdigest()[:16]
    return f"{len(names)}:{digest}"


def class_probabilities(logits: Tensor, *, temperature: float) -> Tensor:
    """Softmax of ``logits / temperature`` (B, K), float32: what a teacher sends."""
    _check_temperature(temperature)
    return F.softmax(logits.float() / temperature, dim=-1)


def teacher_mean(probabilities: Sequence[Tensor]) -> Tensor:
    """The teachers' consensus: the mean of their (B, K) probability rows."""
    return _stack(probabilities).mean(dim=0)


def teacher_certainty(probabilities: Tensor) -> Tensor:
    """``1 - H(p) / log K`` of each (..., K) probability row: 1 one-hot, 0 uniform."""
    k = probabilities.shape[-1]
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1)
    return (1.0 - entropy / math.log(k)).clamp(0.0, 1.0)


def teacher_by_confidence(probabilities: Sequence[Tensor]) -> Tensor:
    """The teachers' consensus with each row weighted by that teacher's certainty on it.

    A teacher's certainty on a public sample is :func:`teacher_certainty`, so a peer that
    cannot tell a sample's class barely moves the consensus on it while a sure peer
    dominates; where every teacher is uniform the plain mean is kept. Equal certainties
    give :func:`teacher_mean`.
    """
    stacked = _stack(probabilities)  # (M, B, K)
    certainty = teacher_certainty(stacked)  # (M, B)
    total = certainty.sum(dim=0, keepdim=True)  # (1, B)
    uniform = total <= 1e-6
    weights = torch.where(uniform, torch.ones_like(certainty), certainty)
    weights = weights / weights.sum(dim=0, keepdim=True)
    return (weights.unsqueeze(-1) * stacked).sum(dim=0)


def distillation_loss(
    logits: Tensor, teacher: Tensor, *, temperature: float, row_weights: Tensor | None = None
) -> Tensor:
    """``T^2 * mean_i w_i KL(teacher_i || softmax(logits_i / T))`` over the B rows.

    Shapes: logits (B, K) with grad; teacher (B, K) probability rows (constants);
    row_weights (B,) in [0, 1] or None (every w_i = 1). Zero exactly when the student's
    tempered softmax equals the teacher on every weighted row; the T^2 keeps the gradient's
    scale independent of T (Hinton et al., 2015).
    """
    _check_student_and_teacher(logits, teacher, temperature)
    log_student = F.log_softmax(logits.float() / temperature, dim=-1)
    teacher = teacher.to(log_student)
    if row_weights is None:
        kl = F.kl_div(log_student, teacher, reduction="batchmean")
    else:
        rows = F.kl_div(log_student, teacher, reduction="none").sum(dim=-1)
        kl = _weighted_row_mean(rows, row_weights)
    return kl * temperature**2


def presence_loss(
    logits: Tensor, teacher: Tensor, *, temperature: float, row_weights: Tensor | None = None
) -> Tensor:
    """Multi-label logits against a single-label teacher read as a lower bound on presence.

    The teacher (B, K) was sent at temperature T; it is first brought back to T = 1 (rows
    raised to the power T and renormalised, which returns a lone peer's own probabilities).
    With q = sigmoid(logits) and that bound b, each (row, class) adds the Bernoulli
    KL(max(b, q) || q): zero where q >= b (a class may be present without being the
    labelled one), KL(b || q) where q < b, so the gradient on a logit is min(q - b, 0).
    Summed over classes, mean over rows (or weighted by ``row_weights`` (B,)).
    """
    _check_student_and_teacher(logits, teacher, temperature)
    logits = logits.float()
    sharpened = teacher.to(logits).clamp_min(0.0) ** temperature
    bound = sharpened / sharpened.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    target = torch.maximum(bound, torch.sigmoid(logits).detach())
    return _bernoulli_kl(logits, target, row_weights)


def image_presence(logits: Tensor) -> Tensor:
    """Presence of each class in each image from dense logits (B, 1 + K, H, W): (B, K).

    The largest softmax probability of class k over the pixels, background (channel 0)
    left out: what a segmentation user sends as a presence teacher, float32 in [0, 1].
    """
    if logits.dim() != 4 or logits.shape[1] < 3:
        raise ValueError(
            f"expected dense logits (B, 1 + K, H, W) with background and K >= 2 classes, "
            f"got {tuple(logits.shape)}"
        )
    return F.softmax(logits.float(), dim=1)[:, 1:].amax(dim=(2, 3))


def presence_distillation_loss(
    logits: Tensor, teacher: Tensor, *, row_weights: Tensor | None = None
) -> Tensor:
    """Multi-label logits against a teacher's presence estimates (B, K) in [0, 1].

    Each (row, class) adds the Bernoulli KL(p || sigmoid(logit)) of the teacher's p, so the
    gradient on a logit is sigmoid(logit) - p. Summed over classes, mean over rows (or
    weighted by ``row_weights`` (B,)).
    """
    _check_student_and_teacher(logits, teacher, 1.0)
    logits = logits.float()
    return _bernoulli_kl(logits, teacher.to(logits).clamp(0.0, 1.0), row_weights)


def _bernoulli_kl(logits: Tensor, target: Tensor, row_weights: Tensor | None) -> Tensor:
    """KL(target || sigmoid(logits)) summed over classes; mean (or weighted mean) over rows."""
    cross = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    entropy = -(torch.xlogy(target, target) + torch.xlogy(1.0 - target, 1.0 - target))
    rows = (cross - entropy).sum(dim=-1)
    return rows.mean() if row_weights is None else _weighted_row_mean(rows, row_weights)


def _check_student_and_teacher(logits: Tensor, teacher: Tensor, temperature: float) -> None:
    _check_temperature(temperature)
    if logits.shape != teacher.shape or logits.dim() != 2:
        raise ValueError(
            f"logits {tuple(logits.shape)} and teacher {tuple(teacher.shape)} must both be (B, K)"
        )


def _weighted_row_mean(rows: Tensor, row_weights: Tensor) -> Tensor:
    """``mean_i w_i rows_i`` of per-row losses (B,), the weights checked to be one per row."""
    if row_weights.shape != rows.shape:
        raise ValueError(
            f"row_weights {tuple(row_weights.shape)} must be ({rows.shape[0]},), one per row"
        )
    return (row_weights.to(rows) * rows).mean()


def _stack(probabilities: Sequence[Tensor]) -> Tensor:
    """The teachers' (B, K) rows as one (M, B, K) float32 tensor, shapes checked."""
    if not probabilities:
        raise ValueError("a teacher consensus needs at least one teacher")
    shapes = {tuple(p.shape) for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"teachers' probabilities must share one (B, K) shape, got {shapes}")
    return torch.stack([p.float() for p in probabilities])


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
