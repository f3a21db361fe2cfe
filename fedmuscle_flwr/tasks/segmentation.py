"""Semantic segmentation: per-pixel cross-entropy, metric mIoU (torchmetrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from fedmuscle_flwr.tasks.base import Batch, Task
from fedmuscle_flwr.tasks.registry import register_task

if TYPE_CHECKING:
    from torchmetrics import Metric

__all__ = ["IGNORE_INDEX", "SemanticSegmentation"]

IGNORE_INDEX = 255
"""Mask value of pixels that count for neither loss nor metric (Pascal VOC's border)."""


@register_task("semantic-segmentation")
class SemanticSegmentation(Task):
    """Per-pixel classification; metric: mIoU.

    ``batch["mask"]`` is long (B, H, W) with class ids (0 = background) and
    :data:`IGNORE_INDEX` for pixels to ignore; logits are (B, K, H, W) at the mask's
    resolution. mIoU is the mean over classes present in the predictions or the targets
    (torchmetrics' macro Jaccard index, which leaves out classes absent from both).
    """

    modalities = frozenset({"image"})
    target_key = "mask"
    head = "dense"
    primary_metric = "miou"
    ignore_index = IGNORE_INDEX

    def _target(self, logits: Tensor, batch: Batch) -> Tensor:
        target = self.targets(batch, logits.device).long()
        if (
            logits.ndim != 4
            or target.ndim != 3
            or target.shape
            != (
                logits.shape[0],
                *logits.shape[2:],
            )
        ):
            raise ValueError(
                f"task {self.name!r} expects logits (B, K, H, W) and {self.target_key!r} "
                f"(B, H, W) at the same resolution, got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        return target

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Cross-entropy averaged over the pixels that are not ignored."""
        return F.cross_entropy(logits, self._target(logits, batch), ignore_index=self.ignore_index)

    def metric_inputs(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits (the metric takes the per-pixel argmax) and the mask."""
        return logits, self._target(logits, batch)

    def metric_objects(self, num_classes: int) -> dict[str, Metric]:
        """mIoU: macro Jaccard index with the ignore index left out."""
        from torchmetrics.classification import MulticlassJaccardIndex

        return {
            "miou": MulticlassJaccardIndex(
                num_classes=num_classes, average="macro", ignore_index=self.ignore_index
            )
        }
