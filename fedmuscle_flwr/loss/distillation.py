"""Distillation of class predictions on the public batch (*beyond the paper*).

Users whose tasks share one label space (the same class names, in the same order: two
image classifiers of one task, or an image and a text classifier of the same classes)
teach each other on the public batch: each sends its class probabilities at temperature
T beside its Z, the server averages its peers' (FedMD-style consensus), and the user's
collaborative step adds the distillation loss

    L_kd = T^2 * mean_i KL(teacher_i || softmax(logits_i / T))

to lambda * L_muscle. A label space is named by :func:`label_space_key`, so the server
never sees the class names themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_probabilities", "distillation_loss", "label_space_key", "teacher_mean"]


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
    if not probabilities:
        raise ValueError("teacher_mean needs at least one teacher")
    shapes = {tuple(p.shape) for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"teachers' probabilities must share one (B, K) shape, got {shapes}")
    return torch.stack([p.float() for p in probabilities]).mean(dim=0)


def distillation_loss(logits: Tensor, teacher: Tensor, *, temperature: float) -> Tensor:
    """``T^2 * KL(teacher || softmax(logits / T))``, averaged over the B rows.

    Shapes: logits (B, K) with grad; teacher (B, K) probability rows (constants). Zero
    exactly when the student's tempered softmax equals the teacher; the T^2 keeps the
    gradient's scale independent of T (Hinton et al., 2015).
    """
    _check_temperature(temperature)
    if logits.shape != teacher.shape or logits.dim() != 2:
        raise ValueError(
            f"logits {tuple(logits.shape)} and teacher {tuple(teacher.shape)} must both be (B, K)"
        )
    log_student = F.log_softmax(logits.float() / temperature, dim=-1)
    teacher = teacher.to(log_student)
    kl = F.kl_div(log_student, teacher, reduction="batchmean")
    return kl * temperature**2


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
