"""Task views of scenes: captions, labels, class names and the ``datasets.Dataset`` sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import Array2D, Array3D, ClassLabel, Dataset, Features, Sequence, Value

from fedmuscle_flwr.data.world.cache import load_scenes
from fedmuscle_flwr.data.world.config import (
    CAPTION_TEMPLATES,
    CELL,
    COLOUR,
    COLOURS,
    KIND,
    KIND_SYNONYMS,
    KINDS,
    POSITION_PHRASES,
    POSITIONS,
    SIZE,
    TASKS,
    Scenes,
    WorldConfig,
)

__all__ = [
    "captions",
    "class_names",
    "num_classes",
    "private_dataset",
    "public_dataset",
    "scene_labels",
    "world_datasets",
]


def _describe(row: np.ndarray, name: int) -> str:
    size = "large" if row[SIZE] == 1 else "small"
    colour = list(COLOURS)[row[COLOUR]]
    kind = KINDS[row[KIND]]
    noun = kind if name == 0 else KIND_SYNONYMS[kind][name - 1]
    return f"a {size} {colour} {noun} {POSITION_PHRASES[row[CELL]]}"


def captions(scenes: Scenes) -> list[str]:
    """Caption every scene: each shape in drawing order, the large main shape first.

    Each kind is named as ``scenes.names`` says: its own name or one of its synonyms.
    """
    out = []
    for rows, names, template in zip(scenes.shapes, scenes.names, scenes.templates, strict=True):
        parts = [_describe(r, int(k)) for r, k in zip(rows, names, strict=True) if r[KIND] >= 0]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        out.append(CAPTION_TEMPLATES[template].format(body))
    return out


def class_names(cfg: WorldConfig, task: str = "image-classification") -> list[str]:
    """Names of the classes of ``task``: ``label`` classes, or shape kinds for the others."""
    _check_task(task)
    if task in ("multi-label-classification", "semantic-segmentation"):
        kinds = list(KINDS[: cfg.num_kinds])
        return kinds if task == "multi-label-classification" else ["background", *kinds]
    if cfg.label_by == "kind":
        return list(KINDS[: cfg.num_kinds])
    if cfg.label_by == "colour":
        return list(COLOURS)[: cfg.num_colours]
    if cfg.label_by == "position":
        return list(POSITIONS)
    return [str(k) for k in range(cfg.min_shapes, cfg.max_shapes + 1)]


def num_classes(cfg: WorldConfig, task: str) -> int:
    """Count the classes of ``task``: labels, multi-hot width, or mask ids with background."""
    return len(class_names(cfg, task))


def scene_labels(scenes: Scenes, cfg: WorldConfig) -> np.ndarray:
    """Single-class labels ``(n,)`` int64 of the scenes under ``cfg.label_by``."""
    main = scenes.shapes[:, 0, :].astype(np.int64)
    if cfg.label_by == "kind":
        return main[:, KIND]
    if cfg.label_by == "colour":
        return main[:, COLOUR]
    if cfg.label_by == "position":
        return main[:, CELL]
    count = (scenes.shapes[:, :, KIND] >= 0).sum(axis=1).astype(np.int64)
    return count - cfg.min_shapes


def _multi_hot(scenes: Scenes, cfg: WorldConfig) -> np.ndarray:
    out = np.zeros((len(scenes), cfg.num_kinds), dtype=np.float32)
    rows, slots = np.nonzero(scenes.shapes[:, :, KIND] >= 0)
    out[rows, scenes.shapes[rows, slots, KIND]] = 1.0
    return out


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def private_dataset(
    cfg: WorldConfig,
    task: str,
    *,
    size: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> Dataset:
    """Build the private data set of one task type, as an in-memory ``datasets.Dataset``.

    Parameters
    ----------
    cfg : WorldConfig
        The world.
    task : str
        One of :data:`TASKS`.
    size : int, optional
        Number of examples; ``cfg.private_size`` when omitted.
    cache_dir : str or Path, optional
        Where generated arrays are cached; see :func:`default_cache_dir`.
    use_cache : bool
        Read and write the cache (default) or always generate.

    Returns
    -------
    datasets.Dataset
        Numpy-formatted, with columns ``index`` (int64), ``label`` (ClassLabel; the
        partition key for every task) and, by task: ``image`` (uint8 ``(S, S, 3)``) for
        the image tasks, ``labels`` (float32 multi-hot over kinds) for multi-label,
        ``mask`` (uint8 ``(S, S)``) for segmentation, ``text`` (str) for text.
    """
    _check_task(task)
    n = cfg.private_size if size is None else size
    scenes = load_scenes(cfg, f"private/{task}", n, cache_dir=cache_dir, use_cache=use_cache)
    s = cfg.image_size
    data: dict[str, object] = {"index": np.arange(n, dtype=np.int64)}
    feats: dict[str, object] = {"index": Value("int64")}
    if task == "text-classification":
        data["text"], feats["text"] = captions(scenes), Value("string")
    else:
        data["image"], feats["image"] = scenes.images, Array3D((s, s, 3), "uint8")
    if task == "multi-label-classification":
        data["labels"] = _multi_hot(scenes, cfg)
        feats["labels"] = Sequence(Value("float32"), length=cfg.num_kinds)
    if task == "semantic-segmentation":
        data["mask"], feats["mask"] = scenes.masks, Array2D((s, s), "uint8")
    data["label"] = scene_labels(scenes, cfg)
    feats["label"] = ClassLabel(names=class_names(cfg, "image-classification"))
    return Dataset.from_dict(data, features=Features(feats)).with_format("numpy")


def public_dataset(
    cfg: WorldConfig,
    *,
    size: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> Dataset:
    """Build the public unlabelled set: ``image`` + ``text`` of one scene, and ``index``.

    Drawn from its own stream, disjoint from every private set. Numpy-formatted.
    """
    n = cfg.public_size if size is None else size
    scenes = load_scenes(cfg, "public", n, cache_dir=cache_dir, use_cache=use_cache)
    s = cfg.image_size
    feats = Features(
        {"index": Value("int64"), "image": Array3D((s, s, 3), "uint8"), "text": Value("string")}
    )
    data = {"index": np.arange(n, dtype=np.int64), "image": scenes.images, "text": captions(scenes)}
    return Dataset.from_dict(data, features=feats).with_format("numpy")


def world_datasets(
    cfg: WorldConfig,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> dict[str, Dataset]:
    """Build the public set (key ``"public"``) and one private set per task of :data:`TASKS`."""
    out = {"public": public_dataset(cfg, cache_dir=cache_dir, use_cache=use_cache)}
    for task in TASKS:
        out[task] = private_dataset(cfg, task, cache_dir=cache_dir, use_cache=use_cache)
    return out
