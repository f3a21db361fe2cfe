"""Image-batch handling shared by vision encoders: checks, channels, normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedmuscle_flwr.tasks import Batch

__all__ = ["ImageInput"]


class ImageInput(nn.Module):
    """Take ``batch["image"]`` (B, 3 or 1, H, W) in [0, 1] to the backbone's input.

    Grey images are repeated to 3 channels; with ``normalize`` the mean/std the backbone
    was trained with are applied.

    Parameters
    ----------
    mean, std : sequence of float
        Per-channel normalisation (ignored when ``normalize`` is False).
    normalize : bool
        Apply ``(x - mean) / std``.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        *,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, batch: Batch) -> Tensor:
        """Return the float (B, 3, H, W) tensor the backbone takes."""
        if "image" not in batch:
            raise KeyError(f"an image model needs batch key 'image'; the batch has {sorted(batch)}")
        image = batch["image"]
        if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3):
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"batch['image'] must be a (B, 3, H, W) tensor, got {shape}")
        x = image.to(device=self.mean.device, dtype=self.mean.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x
