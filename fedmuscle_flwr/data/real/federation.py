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

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from datasets import Array2D, Array3D, ClassLabel, Dataset, Features, Sequence, Value

from fedmuscle_flwr.data.real.columns import build_dataset
from fedmuscle_flwr.data.real.debian import EMOJI_TEST, debian_file
from fedmuscle_flwr.data.real.emoji import (
    EMOJI_LABELS,
    RENDER_VERSION,
    EmojiSet,
    composite,
    emoji_multi_hot,
    foreground_masks,
    load_emoji,
    parse_emoji_test,
    split_emoji,
)
from fedmuscle_flwr.data.real.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from fedmuscle_flwr.data.real.wordnet import (
    DEFAULT_WORDNET_CLASSES,
    LEXNAMES,
    parse_wordnet,
    sample_glosses,
)

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

TASKS: tuple[str, ...] = (
    "image-classification",
    "multi-label-classification",
    "semantic-segmentation",
    "text-classification",
)
_SPLITS = ("train", "test")
_OPTIONAL_CAPS = ("wordnet_max_per_class", "fashion_train_size", "fashion_test_size")


@dataclass(frozen=True)
class RealDataConfig:
    """What determines the real-data federation.

    Parameters
    ----------
    seed : int
        Seed of the emoji public/private split, the private train/test splits and the
        WordNet class sampling.
    image_size : int
        Height and width of every image (emoji and Fashion-MNIST).
    public_fraction : float
        Share of emoji (grouped by name without skin tone) in the public set; the rest
        are held out for the private multi-label and segmentation sets.
    test_fraction : float
        Share of the held-out emoji and of each WordNet class in the test split.
    background : tuple[int, int, int]
        RGB colour the transparent emoji are composited over.
    mask_threshold : int
        A pixel is foreground when its alpha (0..255) is above this.
    segmentation : {"group", "binary"}
        Mask classes: ``group`` gives foreground pixels the class ``group id + 1`` (10
        classes with background); ``binary`` gives them 1 (2 classes).
    wordnet_classes : tuple[str, ...]
        Lexnames used as text classes, in label order.
    wordnet_max_per_class : int or None
        Cap on synsets per class before the train/test split (None: all).
    fashion_train_size, fashion_test_size : int or None
        Keep only the first examples of each Fashion-MNIST split (None: 60k / 10k).
    fashion_rgb : bool
        Store Fashion-MNIST images as ``(S, S, 3)``; by default they stay grey
        ``(S, S)`` (a quarter of the memory) and :func:`fedmuscle_flwr.data.batches.to_batch`
        repeats them to three channels.
    root : str or None
        File-system root of the Debian files (None: ``$FEDMUSCLE_DEBIAN_ROOT`` or ``/``).
    cache_dir : str or None
        Emoji render cache (None: ``$FEDMUSCLE_CACHE/real`` or ``~/.cache/fedmuscle/real``).
    use_cache : bool
        Read and write the emoji render cache.
    """

    seed: int = 0
    image_size: int = 32
    public_fraction: float = 0.5
    test_fraction: float = 0.2
    background: tuple[int, int, int] = (128, 128, 128)
    mask_threshold: int = 127
    segmentation: Literal["group", "binary"] = "group"
    wordnet_classes: tuple[str, ...] = DEFAULT_WORDNET_CLASSES
    wordnet_max_per_class: int | None = 1000
    fashion_train_size: int | None = None
    fashion_test_size: int | None = None
    fashion_rgb: bool = False
    root: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        for name in ("public_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if not 0 <= self.mask_threshold < 255:
            raise ValueError(f"mask_threshold must be in [0, 255), got {self.mask_threshold}")
        if self.segmentation not in ("group", "binary"):
            raise ValueError(f"segmentation must be 'group' or 'binary', got {self.segmentation!r}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be three values in [0, 255], got {self.background}")
        if not self.wordnet_classes:
            raise ValueError("wordnet_classes must not be empty")
        unknown = [name for name in self.wordnet_classes if name not in LEXNAMES]
        if unknown:
            raise ValueError(f"unknown lexnames {unknown}; known: {', '.join(LEXNAMES)}")
        for name in ("wordnet_max_per_class", "fashion_train_size", "fashion_test_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive or None, got {value}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RealDataConfig:
        """Build from flat run-config values; keys may use ``-`` for ``_``.

        Tuple fields accept comma-separated strings (``"noun.animal,noun.plant"``,
        ``"255,255,255"``); the optional caps (``wordnet_max_per_class``,
        ``fashion_train_size``, ``fashion_test_size``) take 0 for None (no cap), as TOML
        has no null; unknown keys raise ``ValueError``.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ValueError(f"unknown real-data option {key!r}; known: {sorted(fields)}")
            if name in ("wordnet_classes", "background") and isinstance(value, str):
                parts = [p.strip() for p in value.split(",") if p.strip()]
                value = tuple(int(p) for p in parts) if name == "background" else tuple(parts)
            if name in _OPTIONAL_CAPS and value == 0:
                value = None
            kwargs[name] = value
        return cls(**kwargs)


class _Sources:
    """Lazily loaded raw sources shared by the data sets built from one config."""

    def __init__(self, cfg: RealDataConfig) -> None:
        self.cfg = cfg

    @cached_property
    def emoji(self) -> EmojiSet:
        c = self.cfg
        return load_emoji(c.image_size, root=c.root, cache_dir=c.cache_dir, use_cache=c.use_cache)

    @cached_property
    def emoji_split(self) -> dict[str, np.ndarray]:
        c = self.cfg
        return split_emoji(
            self.emoji.records,
            seed=c.seed,
            public_fraction=c.public_fraction,
            test_fraction=c.test_fraction,
        )

    @cached_property
    def wordnet(self) -> dict[str, tuple[list[str], np.ndarray]]:
        c = self.cfg
        pos = sorted({name.split(".")[0] for name in c.wordnet_classes})
        return sample_glosses(
            parse_wordnet(pos, lexnames=c.wordnet_classes, root=c.root),
            c.wordnet_classes,
            max_per_class=c.wordnet_max_per_class,
            test_fraction=c.test_fraction,
            seed=c.seed,
        )


def _image_feature(cfg: RealDataConfig) -> Array3D:
    return Array3D((cfg.image_size, cfg.image_size, 3), "uint8")


def _fingerprint(name: str, split: str, cfg: RealDataConfig, *extra: object) -> tuple[object, ...]:
    return (name, split, dataclasses.astuple(cfg), RENDER_VERSION, *extra)


def _emoji_columns(src: _Sources, part: str) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Rows of one emoji split: positions, shared columns and their features."""
    rows = src.emoji_split[part]
    images = composite(src.emoji.rgba[rows], src.cfg.background)
    columns: dict[str, Any] = {
        "index": np.arange(len(rows), dtype=np.int64),
        "emoji_id": rows.astype(np.int64),
        "image": images,
    }
    features: dict[str, Any] = {
        "index": Value("int64"),
        "emoji_id": Value("int64"),
        "image": _image_feature(src.cfg),
    }
    return rows, columns, features


def _emoji_masks(src: _Sources, rows: np.ndarray) -> np.ndarray:
    fg = foreground_masks(src.emoji.rgba[rows], src.cfg.mask_threshold)
    if src.cfg.segmentation == "binary":
        return fg.astype(np.uint8)
    group = src.emoji.group_ids()[rows].astype(np.uint8) + 1
    return (fg * group[:, None, None]).astype(np.uint8)


def _build_public(src: _Sources, split: str, with_labels: bool = False) -> Dataset:
    if split != "train":
        raise ValueError("the public set has a single split, 'train'")
    rows, columns, features = _emoji_columns(src, "public")
    columns["text"] = [src.emoji.records[i].name for i in rows]
    features["text"] = Value("string")
    if with_labels:
        columns["group"] = src.emoji.group_ids()[rows]
        columns["subgroup"] = src.emoji.subgroup_ids()[rows]
        columns["mask"] = _emoji_masks(src, rows)
        features["group"] = ClassLabel(names=list(src.emoji.groups))
        features["subgroup"] = ClassLabel(names=list(src.emoji.subgroups))
        features["mask"] = Array2D((src.cfg.image_size,) * 2, "uint8")
    parts = _fingerprint("emoji-public", split, src.cfg, with_labels)
    return build_dataset(columns, Features(features), fingerprint_parts=parts)


def _build_emoji_private(src: _Sources, split: str, task: str) -> Dataset:
    _check_split(split)
    rows, columns, features = _emoji_columns(src, split)
    if task == "multi-label-classification":
        columns["labels"] = emoji_multi_hot([src.emoji.records[i].name for i in rows])
        features["labels"] = Sequence(Value("float32"), length=len(EMOJI_LABELS))
        name = "emoji-multilabel"
    else:
        columns["mask"] = _emoji_masks(src, rows)
        features["mask"] = Array2D((src.cfg.image_size,) * 2, "uint8")
        name = "emoji-segmentation"
    columns["label"] = src.emoji.group_ids()[rows]
    features["label"] = ClassLabel(names=list(src.emoji.groups))
    parts = _fingerprint(name, split, src.cfg)
    return build_dataset(columns, Features(features), fingerprint_parts=parts)


def _build_fashion(src: _Sources, split: str) -> Dataset:
    _check_split(split)
    c = src.cfg
    limit = c.fashion_train_size if split == "train" else c.fashion_test_size
    grey, labels = load_fashion_mnist(split, size=c.image_size, limit=limit, root=c.root)
    columns = {
        "index": np.arange(len(labels), dtype=np.int64),
        "image": np.repeat(grey[..., None], 3, axis=-1) if c.fashion_rgb else grey,
        "label": labels,
    }
    image = _image_feature(c) if c.fashion_rgb else Array2D((c.image_size,) * 2, "uint8")
    features = Features(
        {
            "index": Value("int64"),
            "image": image,
            "label": ClassLabel(names=list(FASHION_MNIST_CLASSES)),
        }
    )
    return build_dataset(columns, features, fingerprint_parts=_fingerprint("fm", split, c))


def _build_wordnet(src: _Sources, split: str) -> Dataset:
    _check_split(split)
    c = src.cfg
    texts, labels = src.wordnet[split]
    columns = {"index": np.arange(len(texts), dtype=np.int64), "text": texts, "label": labels}
    features = Features(
        {
            "index": Value("int64"),
            "text": Value("string"),
            "label": ClassLabel(names=list(c.wordnet_classes)),
        }
    )
    return build_dataset(columns, features, fingerprint_parts=_fingerprint("wn", split, c))


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")


@dataclass(frozen=True)
class RealDatasetSpec:
    """One named data set of the real-data federation.

    Attributes
    ----------
    name : str
        Key in :data:`REAL_DATASETS`.
    task : str
        Task id, or ``"public"`` for the public image+caption set.
    packages : tuple[str, ...]
        Debian packages it reads.
    description : str
        One line for listings.
    """

    name: str
    task: str
    packages: tuple[str, ...]
    description: str
    _build: Callable[[_Sources, str], Dataset] = dataclasses.field(repr=False, compare=False)

    def load(self, cfg: RealDataConfig | None = None, split: str = "train") -> Dataset:
        """Build this data set's ``split`` under ``cfg`` (defaults when omitted)."""
        return self._build(_Sources(cfg or RealDataConfig()), split)


_EMOJI_PACKAGES = ("fonts-noto-color-emoji", "unicode-data")

REAL_DATASETS: Mapping[str, RealDatasetSpec] = {
    spec.name: spec
    for spec in (
        RealDatasetSpec(
            "emoji-public",
            "public",
            _EMOJI_PACKAGES,
            "Noto emoji images with their CLDR names as captions (public share)",
            _build_public,
        ),
        RealDatasetSpec(
            "fashion-mnist",
            "image-classification",
            ("dataset-fashion-mnist",),
            "Fashion-MNIST, 10 clothing classes, grey repeated to RGB",
            _build_fashion,
        ),
        RealDatasetSpec(
            "wordnet-lexnames",
            "text-classification",
            ("wordnet-base",),
            "WordNet 3.0 glosses labelled by lexicographer file",
            _build_wordnet,
        ),
        RealDatasetSpec(
            "emoji-multilabel",
            "multi-label-classification",
            _EMOJI_PACKAGES,
            "held-out emoji, multi-hot of words in their names",
            lambda src, split: _build_emoji_private(src, split, "multi-label-classification"),
        ),
        RealDatasetSpec(
            "emoji-segmentation",
            "semantic-segmentation",
            _EMOJI_PACKAGES,
            "held-out emoji, alpha masks (foreground class = group or 1)",
            lambda src, split: _build_emoji_private(src, split, "semantic-segmentation"),
        ),
    )
}

#: The data set each task id uses in the real-data federation.
REAL_TASK_DATASETS: Mapping[str, str] = {
    spec.task: name for name, spec in REAL_DATASETS.items() if spec.task != "public"
}


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
    return _build_public(_Sources(cfg or RealDataConfig()), "train", with_labels)


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
    src = _Sources(cfg or RealDataConfig())
    out = {"public": _build_public(src, "train")}
    for task in TASKS:
        spec = REAL_DATASETS[REAL_TASK_DATASETS[task]]
        out[task] = spec._build(src, "train")
        if with_test:
            out[f"{task}/test"] = spec._build(src, "test")
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
