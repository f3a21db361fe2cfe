"""Task types: what a client's private data asks of its model (loss, metrics, head).

Canonical ids: ``image-classification`` (accuracy), ``multi-label-classification`` (mAP,
micro-F1), ``semantic-segmentation`` (mIoU), ``text-classification`` (accuracy,
macro-F1). More come from :func:`register_task` or the entry-point group
``fedmuscle.tasks``.
"""

from fedmuscle_flwr.tasks.base import Batch, HeadKind, Task, TaskMetrics
from fedmuscle_flwr.tasks.classification import (
    ImageClassification,
    MultiLabelClassification,
    TextClassification,
)
from fedmuscle_flwr.tasks.registry import (
    ENTRY_POINT_GROUP,
    TASKS,
    get_task,
    list_tasks,
    register_task,
)
from fedmuscle_flwr.tasks.segmentation import IGNORE_INDEX, SemanticSegmentation

#: Ids of the built-in task types, sorted: the tasks registered by the modules above,
#: before any plug-in. The offline data sources (world, real) provide each of them.
BUILTIN_TASKS: tuple[str, ...] = tuple(TASKS.names_so_far())

__all__ = [
    "BUILTIN_TASKS",
    "ENTRY_POINT_GROUP",
    "IGNORE_INDEX",
    "TASKS",
    "Batch",
    "HeadKind",
    "ImageClassification",
    "MultiLabelClassification",
    "SemanticSegmentation",
    "Task",
    "TaskMetrics",
    "TextClassification",
    "get_task",
    "list_tasks",
    "register_task",
]
