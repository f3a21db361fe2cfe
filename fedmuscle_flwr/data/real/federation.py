"""The offline real-data federation: public emoji pairs and four private task sets.

One :class:`RealDataConfig` determines everything; data sets are built by name
(:data:`REAL_DATASETS`) or by task id (:func:`load_real_private`):

========================  ============================  =====================================
name                      task                          source (Debian package)
========================  ============================  =====================================
``emoji-public``          public image+caption pairs    emoji (``fonts-noto-color-emoji``,
                                                        ``unicode-data``), public share
``fashion-mnist``         image-classification          ``dataset-fashion-mnist``
``wordnet-lexnames``      text-classification           ``wordnet-base``
``emoji-multilabel``      multi-label-classification    emoji held out of the public set
``emoji-segmentation``    semantic-segmentation         emoji held out of the public set
========================  ============================  =====================================

The data sets follow the procedural world's schema (:mod:`fedmuscle_flwr.data.world`):
numpy-formatted in-memory ``datasets.Dataset`` with ``index`` (int64), ``image`` (uint8
``(S, S, 3)``; Fashion-MNIST stays grey ``(S, S)`` unless ``fashion_rgb``), ``text``
(str), ``label`` (ClassLabel; the partition key of every private set), ``labels``
(float32 multi-hot), ``mask`` (uint8 ``(S, S)``, 0 = background). Emoji rows also carry
``emoji_id``, their position in ``emoji-test.txt``. Turn rows into tensor batches with
:func:`fedmuscle_flwr.data.batches.to_batch`.
"""

from __future__ import annotations

from datasets import Dataset

from fedmuscle_flwr.data.real.builders import RawSources, build_public
from fedmuscle_flwr.data.real.catalog import REAL_DATASETS, REAL_TASK_DATASETS, RealDatasetSpec
from fedmuscle_flwr.data.real.config import RealDataConfig
from fedmuscle_flwr.data.real.debian import EMOJI_TEST, debian_file
from fedmuscle_flwr.data.real.emoji import EMOJI_LABELS, parse_emoji_test
from fedmuscle_flwr.data.real.fashion_mnist import FASHION_MNIST_CLASSES
from fedmuscle_flwr.tasks import BUILTIN_TASKS

__all__ = [
    "REAL_DATASETS",
    "REAL_TASK_DATASETS",
    "TASKS",
    "RealDataConfig",
    "RealDatasetSpec",
    "load_real_dataset",
    "load_real_private",
    "load_real_public",
    "real_class_names",
    "real_datasets",
    "real_num_classes",
]

#: The task types the federation provides data for: the built-in ones of the task registry.
TASKS: tuple[str, ...] = BUILTIN_TASKS


def _check_task(task: str) -> None:
    if task not in REAL_TASK_DATASETS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def load_real_dataset(
    name: str, cfg: RealDataConfig | None = None, split: str = "train"
) -> Dataset:
    """Build the data set ``name`` of :data:`REAL_DATASETS`.

    Raises
    ------
    KeyError
        For an unknown name; the message lists the known ones.
    MissingDebianPackageError
        When a Debian package it reads is not installed (the message has the command).
    """
    if name not in REAL_DATASETS:
        raise KeyError(f"unknown real data set {name!r}; known: {', '.join(REAL_DATASETS)}")
    return REAL_DATASETS[name].load(cfg, split)


def load_real_public(cfg: RealDataConfig | None = None, *, with_labels: bool = False) -> Dataset:
    """The public set: emoji ``image`` + CLDR-name ``text`` pairs, with ``index``.

    Parameters
    ----------
    cfg : RealDataConfig, optional
        Defaults when omitted.
    with_labels : bool
        Also add ``group``, ``subgroup`` (ClassLabel) and ``mask`` columns, for analysis;
        the federation itself treats the public set as unlabelled.

    Returns
    -------
    datasets.Dataset
        Columns ``index`` (0..P-1), ``emoji_id``, ``image`` (uint8 ``(S, S, 3)``),
        ``text``; disjoint from the emoji of the private sets.
    """
    return build_public(RawSources(cfg or RealDataConfig()), "train", with_labels)


def load_real_private(
    task: str, cfg: RealDataConfig | None = None, *, split: str = "train"
) -> Dataset:
    """The private data set of task ``task`` (one of :data:`TASKS`), ``train`` or ``test``.

    Returns
    -------
    datasets.Dataset
        ``index`` and ``label`` (ClassLabel) always; by task: ``image``
        (image-classification, multi-label, segmentation), ``labels`` float32
        ``(K,)`` (multi-label), ``mask`` uint8 ``(S, S)`` (segmentation), ``text``
        (text-classification); ``emoji_id`` for the emoji-based sets.
    """
    _check_task(task)
    return load_real_dataset(REAL_TASK_DATASETS[task], cfg, split)


def real_datasets(
    cfg: RealDataConfig | None = None, *, with_test: bool = False
) -> dict[str, Dataset]:
    """The whole federation's data: ``"public"`` and each task id (train split).

    With ``with_test`` also ``"<task>/test"``. Emoji are rendered (or read from the
    cache) once for all emoji-based sets.
    """
    src = RawSources(cfg or RealDataConfig())
    out = {"public": build_public(src, "train")}
    for task in TASKS:
        spec = REAL_DATASETS[REAL_TASK_DATASETS[task]]
        out[task] = spec.build(src, "train")
        if with_test:
            out[f"{task}/test"] = spec.build(src, "test")
    return out


def real_class_names(task: str, cfg: RealDataConfig | None = None) -> list[str]:
    """Class names of ``task``: ``label`` classes, multi-hot labels or mask classes.

    The emoji group names come from the installed ``emoji-test.txt``.
    """
    _check_task(task)
    c = cfg or RealDataConfig()
    if task == "image-classification":
        return list(FASHION_MNIST_CLASSES)
    if task == "text-classification":
        return list(c.wordnet_classes)
    if task == "multi-label-classification":
        return list(EMOJI_LABELS)
    if c.segmentation == "binary":
        return ["background", "foreground"]
    records = parse_emoji_test(debian_file(EMOJI_TEST, root=c.root))
    return ["background", *dict.fromkeys(r.group for r in records)]


def real_num_classes(task: str, cfg: RealDataConfig | None = None) -> int:
    """Number of classes of ``task`` (mask ids include the background)."""
    return len(real_class_names(task, cfg))
