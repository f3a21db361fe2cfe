"""Choosing the torch device: the best one present, or a named one, checked."""

from __future__ import annotations

import torch

__all__ = ["best_device", "resolve_device"]


def best_device() -> torch.device:
    """CUDA when available, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> :func:`best_device`; otherwise the named device, checked.

    Raises
    ------
    ValueError
        When a CUDA device is named but CUDA is not available.
    """
    if name == "auto":
        return best_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available; use device='auto'"
        )
    return device
