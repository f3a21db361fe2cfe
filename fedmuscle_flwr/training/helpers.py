"""Small PyTorch pieces of the trainer: the loss check, head parameters, frozen norm layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from fedmuscle_flwr.models import ClientModel

__all__ = ["check_finite", "frozen_norm_statistics", "is_head"]


def check_finite(loss: Tensor) -> None:
    """Refuse a NaN or infinite loss before it reaches the optimiser."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {float(loss)}: lower the learning rate or tau")


def is_head(model: ClientModel, param: torch.nn.Parameter) -> bool:
    """Whether ``param`` belongs to the task head (which the contrastive loss never reaches)."""
    return any(param is p for p in model.head.parameters())


@contextlib.contextmanager
def frozen_norm_statistics(model: torch.nn.Module) -> Iterator[None]:
    """Put batch-statistics norm layers in eval mode for the duration, then restore."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
    ]
    for module in norms:
        module.eval()
    try:
        yield
    finally:
        for module in norms:
            module.train()
