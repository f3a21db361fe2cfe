"""Classification tasks: single-label (image, text) and multi-label.

Losses are PyTorch's cross-entropy and BCE-with-logits; metrics are torchmetrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from fedmuscle_flwr.tasks.base import Batch, Task
from fedmuscle_flwr.tasks.registry import register_task

if TYPE_CHECKING:
    from torchmetrics import Metric

__all__ = ["ImageClassification", "MultiLabelClassification", "TextClassification"]


class _SingleLabel(Task):
    """One class per sample: ``batch["label"]`` long (B,), logits (B, K)."""

    target_key = "label"
    head = "pooled"
    primary_metric = "accuracy"
    single_label = True

    def _target(self, logits: Tensor, batch: Batch) -> Tensor:
        target = self.targets(batch, logits.device).long()
        if logits.ndim != 2 or target.shape != logits.shape[:1]:
            raise ValueError(
                f"task {self.name!r} expects logits (B, K) and {self.target_key!r} (B,), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        return target

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Cross-entropy of logits (B, K) against ``batch["label"]`` (B,)."""
        return F.cross_entropy(logits, self._target(logits, batch))

    def metric_inputs(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits (the metrics take their argmax) and the class ids."""
        return logits, self._target(logits, batch)

    def metric_objects(self, num_classes: int) -> dict[str, Metric]:
        """Accuracy (micro average: the fraction of samples classified right)."""
        from torchmetrics.classification import MulticlassAccuracy

        return {"accuracy": MulticlassAccuracy(num_classes=num_classes, average="micro")}


@register_task("image-classification")
class ImageClassification(_SingleLabel):
    """Image classification; metric: accuracy."""

    modalities = frozenset({"image"})


@register_task("text-classification")
class TextClassification(_SingleLabel):
    """Text classification; metrics: accuracy and macro-F1."""

    modalities = frozenset({"text"})

    def metric_objects(self, num_classes: int) -> dict[str, Metric]:
        """Accuracy (micro) and F1 averaged over classes (macro)."""
        from torchmetrics.classification import MulticlassF1Score

        return {
            **super().metric_objects(num_classes),
            "macro_f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        }


@register_task("multi-label-classification")
class MultiLabelClassification(Task):
    """Several labels per sample; metrics: mAP (primary) and micro-F1 at 0.5.

    ``batch["labels"]`` is multi-hot (B, K); logits (B, K). mAP is the macro average of
    per-label average precision (torchmetrics: a label without a positive in the
    evaluated data scores 0, so evaluate on data where every label occurs).
    """

    modalities = frozenset({"image", "text"})
    target_key = "labels"
    head = "pooled"
    primary_metric = "map"
    multi_label = True

    def _target(self, logits: Tensor, batch: Batch) -> Tensor:
        target = self.targets(batch, logits.device)
        if logits.ndim != 2 or target.shape != logits.shape:
            raise ValueError(
                f"task {self.name!r} expects logits and {self.target_key!r} of the same shape "
                f"(B, K), got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        return target

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Binary cross-entropy with logits, averaged over samples and labels."""
        return F.binary_cross_entropy_with_logits(logits, self._target(logits, batch).float())

    def metric_inputs(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Sigmoid probabilities and integer multi-hot targets.

        The sigmoid is applied here: torchmetrics only applies it itself when some value
        lies outside [0, 1], which logits need not do.
        """
        return logits.sigmoid(), self._target(logits, batch).round().long()

    def metric_objects(self, num_classes: int) -> dict[str, Metric]:
        """Macro mAP and micro-F1 (threshold 0.5 on the probabilities)."""
        from torchmetrics.classification import (
            MultilabelAveragePrecision,
            MultilabelF1Score,
        )

        return {
            "map": MultilabelAveragePrecision(num_labels=num_classes, average="macro"),
            "micro_f1": MultilabelF1Score(num_labels=num_classes, average="micro"),
        }
