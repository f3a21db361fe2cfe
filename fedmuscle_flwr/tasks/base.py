"""The task contract: what a task reads from a batch, its loss, and its metrics.

A task type is data-independent: it knows the batch key holding its targets, the
modalities its inputs may come in, the kind of head it needs (``"pooled"``: one vector
per sample; ``"dense"``: one vector per pixel), its loss and its torchmetrics metrics.

Batch conventions (produced by :mod:`fedmuscle_flwr.data`):

- ``"image"``: float (B, 3, H, W), in [0, 1]
- ``"text"``: list of B strings
- ``"label"``: long (B,), one class id per sample
- ``"labels"``: float multi-hot (B, K)
- ``"mask"``: long (B, H, W), one class id per pixel (0 = background, 255 = ignore)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:  # torchmetrics imports torchvision: seconds, so only when metrics are made
    from torchmetrics import Metric

__all__ = ["Batch", "HeadKind", "Task", "TaskMetrics"]

Batch = Mapping[str, Any]
HeadKind = Literal["pooled", "dense"]


class TaskMetrics:
    """A task's torchmetrics collection, fed with logits and the batch.

    Parameters
    ----------
    task : Task
        The task whose :meth:`Task.metric_inputs` turns logits and batch into the
        ``(preds, target)`` pair the metrics take.
    metrics : dict of str to torchmetrics.Metric
        Metric name (as reported) to metric object.
    """

    def __init__(self, task: Task, metrics: dict[str, Metric]) -> None:
        from torchmetrics import MetricCollection

        self.task = task
        self.collection = MetricCollection(dict(metrics.items()))

    def update(self, logits: Tensor, batch: Batch) -> None:
        """Accumulate one batch's predictions (``logits`` as from ``forward_task``)."""
        preds, target = self.task.metric_inputs(logits.detach(), batch)
        self.collection.update(preds, target)

    def compute(self) -> dict[str, float]:
        """Return every metric over everything seen since the last :meth:`reset`."""
        return {name: float(value) for name, value in self.collection.compute().items()}

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.collection.reset()

    def to(self, device: torch.device | str) -> TaskMetrics:
        """Move the metric states to ``device`` and return ``self``."""
        self.collection.to(device)
        return self

    @property
    def names(self) -> list[str]:
        """The metric names :meth:`compute` reports."""
        return [str(name) for name in self.collection]


class Task(ABC):
    """A task type: targets, loss, metrics and head kind.

    Subclasses set the class attributes and implement :meth:`loss`,
    :meth:`metric_objects` and :meth:`metric_inputs`. Instances are stateless and shared
    through the registry (:func:`fedmuscle_flwr.tasks.get_task`).

    Attributes
    ----------
    name : str
        Canonical id, e.g. ``"image-classification"`` (set on registration).
    modalities : frozenset of str
        Input modalities the task accepts; each is also the batch key of the input.
    target_key : str
        Batch key of the targets.
    head : {"pooled", "dense"}
        ``"pooled"``: logits (B, K) from pooled features; ``"dense"``: logits
        (B, K, H, W) at input resolution from spatial features.
    primary_metric : str
        The metric used as the user's score (and for Delta).
    single_label : bool
        Whether the logits (B, K) are one softmax over the K classes of the data's
        ``label`` column: such users can distil class predictions with peers of the same
        label space (``distill-weight``).
    multi_label : bool
        Whether the logits (B, K) are K independent sigmoids over the task's named
        outputs: such users can learn presence from single-label peers whose classes carry
        the same names (``distill-presence``).
    """

    name: str = ""
    modalities: ClassVar[frozenset[str]] = frozenset()
    target_key: ClassVar[str] = ""
    head: ClassVar[HeadKind] = "pooled"
    primary_metric: ClassVar[str] = ""
    single_label: ClassVar[bool] = False
    multi_label: ClassVar[bool] = False

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """Keys the task reads from a batch: the target key (inputs are the modality)."""
        return (self.target_key,)

    def targets(self, batch: Batch, device: torch.device | None = None) -> Tensor:
        """Return the batch's targets, checked for presence, on ``device``."""
        if self.target_key not in batch:
            raise KeyError(
                f"task {self.name!r} needs batch key {self.target_key!r}; "
                f"the batch has {sorted(batch)}"
            )
        target = batch[self.target_key]
        if not isinstance(target, Tensor):
            target = torch.as_tensor(target)
        return target.to(device) if device is not None else target

    @abstractmethod
    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Return the scalar training loss of ``logits`` against the batch's targets."""

    @abstractmethod
    def metric_objects(self, num_classes: int) -> dict[str, Metric]:
        """Return fresh torchmetrics objects, by reported name."""

    @abstractmethod
    def metric_inputs(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Return the ``(preds, target)`` pair the metric objects are updated with."""

    def metrics(self, num_classes: int) -> TaskMetrics:
        """Return a fresh metric accumulator for a model with ``num_classes`` outputs.

        Parameters
        ----------
        num_classes : int
            Number of classes (or labels, for multi-label), at least 2 for single-label
            tasks and 1 for multi-label.
        """
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        return TaskMetrics(self, self.metric_objects(int(num_classes)))

    def check_modality(self, modality: str) -> None:
        """Raise ``ValueError`` when inputs of ``modality`` cannot serve this task."""
        if modality not in self.modalities:
            raise ValueError(
                f"task {self.name!r} takes {' or '.join(sorted(self.modalities))} inputs, "
                f"not {modality!r}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
