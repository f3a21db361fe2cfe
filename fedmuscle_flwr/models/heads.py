"""Task heads: a linear classifier on pooled features, a light decoder on spatial ones."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DenseHead"]


class DenseHead(nn.Module):
    """A SegFormer-style all-MLP decoder over one or more feature maps.

    Each map gets a 1x1 projection to ``hidden`` channels and is resized to the first
    (largest) map; the concatenation is fused by a 1x1 conv + BatchNorm + ReLU, classified
    per pixel by a 1x1 conv, and upsampled bilinearly to the input resolution.

    Parameters
    ----------
    in_channels : sequence of int
        Channels of the feature maps, largest resolution first.
    num_classes : int
        Output channels (classes).
    hidden : int
        Decoder width.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("DenseHead needs at least one feature map")
        self.lateral = nn.ModuleList(nn.Conv2d(c, hidden, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(hidden * len(in_channels), hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(hidden, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Map features [(B, C_i, h_i, w_i)] to logits (B, num_classes, *size)."""
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps, got {len(features)}")
        base = tuple(features[0].shape[-2:])
        maps = []
        for proj, feat in zip(self.lateral, features, strict=True):
            x = proj(feat)
            if tuple(x.shape[-2:]) != base:
                x = F.interpolate(x, size=base, mode="bilinear", align_corners=False)
            maps.append(x)
        logits = self.classifier(self.fuse(torch.cat(maps, dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
