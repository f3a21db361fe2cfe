"""Real data sets by name through Hugging Face ``datasets``, mapped to our columns.

Each name in :data:`HUB_DATASETS` knows its Hub repository, its task and which of its
columns become ours (``image``, ``text``, ``label``, ``labels``, ``mask``; see
:mod:`fedmuscle_flwr.data.batches`). :func:`load_hub_dataset` reads it from the Hub when
there is network, or from local files: ``data_files=`` (parquet, csv, json or arrow files
with the Hub's column names, e.g. the Hub's own parquet export) or ``data_dir=`` (a folder
of such files, or an ``imagefolder`` tree). Nothing here downloads unless asked to read
from the Hub.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, Image, Value
from PIL import Image as PILImage

__all__ = [
    "HUB_DATASETS",
    "DatasetUnavailableError",
    "HubSpec",
    "list_hub_datasets",
    "load_hub_dataset",
    "mask_ids",
    "voc_palette",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
#: Pascal VOC marks object boundaries with this id; it stays in the mask (ignore it).
VOC_VOID = 255
_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DatasetUnavailableError(RuntimeError):
    """A named data set could be read neither from local files nor from the Hub."""


@dataclass(frozen=True)
class HubSpec:
    """How one named data set maps onto our columns.

    Attributes
    ----------
    name : str
        Our name for it.
    path : str
        Hugging Face Hub repository id.
    task : str
        Canonical task id, or ``"public"`` for an image+caption set.
    image, text, label, mask : str or None
        The source column that becomes our ``image``, ``text``, ``label`` or ``mask``.
    num_classes : int
        Classes of ``label`` (or width of ``labels``; mask ids for segmentation).
    class_names : tuple of str
        Names of those classes when known; else taken from the data or numbered.
    splits : Mapping[str, str]
        Our split name to the Hub's (e.g. VOC has ``val`` where we ask for ``test``).
    """

    name: str
    path: str
    task: str
    image: str | None = None
    text: str | None = None
    label: str | None = None
    mask: str | None = None
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})

    @property
    def source_columns(self) -> dict[str, str]:
        """Our column name to the source column name, for the columns this set has."""
        roles = {"image": self.image, "text": self.text, "label": self.label, "mask": self.mask}
        return {ours: src for ours, src in roles.items() if src is not None}


_CIFAR10 = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_FASHION = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
    "Bag", "Ankle boot",
)  # fmt: skip
_VOC_SPLITS = {"train": "train", "test": "val", "val": "val"}

HUB_DATASETS: dict[str, HubSpec] = {
    spec.name: spec
    for spec in (
        HubSpec("cifar10", "uoft-cs/cifar10", "image-classification", image="img",
                label="label", num_classes=10, class_names=_CIFAR10),
        HubSpec("cifar100", "uoft-cs/cifar100", "image-classification", image="img",
                label="fine_label", num_classes=100),
        HubSpec("cifar100-coarse", "uoft-cs/cifar100", "image-classification", image="img",
                label="coarse_label", num_classes=20),
        HubSpec("mnist", "ylecun/mnist", "image-classification", image="image",
                label="label", num_classes=10, class_names=tuple("0123456789")),
        HubSpec("fashion-mnist", "zalando-datasets/fashion_mnist", "image-classification",
                image="image", label="label", num_classes=10, class_names=_FASHION),
        HubSpec("ag_news", "fancyzhx/ag_news", "text-classification", text="text",
                label="label", num_classes=4,
                class_names=("World", "Sports", "Business", "Sci/Tech")),
        HubSpec("voc", "jxie/pascal-voc-2012", "semantic-segmentation", image="image",
                mask="mask", num_classes=21, class_names=VOC_CLASSES, splits=_VOC_SPLITS),
        HubSpec("voc-multilabel", "jxie/pascal-voc-2012", "multi-label-classification",
                image="image", mask="mask", num_classes=20, class_names=VOC_CLASSES[1:],
                splits=_VOC_SPLITS),
        HubSpec("flickr30k", "nlphuji/flickr30k", "public", image="image", text="caption",
                splits={"train": "test", "test": "test"}),
    )
}  # fmt: skip


def list_hub_datasets() -> list[str]:
    """Names accepted by :func:`load_hub_dataset`."""
    return sorted(HUB_DATASETS)


# --------------------------------------------------------------------------- reading
def _check_local(pattern: str, name: str, spec: HubSpec) -> None:
    is_glob = any(c in pattern for c in "*?[")
    exists = bool(glob.glob(pattern)) if is_glob else Path(pattern).exists()
    if not exists:
        raise FileNotFoundError(
            f"local data for {name!r} not found: {pattern} does not exist. Put the files "
            f"there (e.g. the parquet export of the Hub repository {spec.path}, with columns "
            f"{sorted(spec.source_columns.values())}), or pass data_files=/data_dir= "
            "pointing at them, or load from the Hub with network access."
        )


def _builder_for(files: Sequence[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"cannot tell the file format of {list(files)}; use one of {sorted(_BUILDERS)}"
        )
    return str(builders.pop())


def _from_files(
    spec: HubSpec,
    split: str,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    cache_dir: str | None,
) -> Dataset:
    if isinstance(data_files, Mapping):
        if split not in data_files:
            raise ValueError(f"split {split!r} not in data_files (has {sorted(data_files)})")
        data_files = data_files[split]
    if isinstance(data_files, str | os.PathLike):
        data_files = [data_files]
    files = [os.fspath(f) for f in data_files]
    for pattern in files:
        _check_local(pattern, spec.name, spec)
    out = datasets.load_dataset(
        _builder_for(files), data_files={split: files}, split=split, cache_dir=cache_dir
    )
    assert isinstance(out, Dataset)
    return out


def _from_dir(spec: HubSpec, split: str, data_dir: str | os.PathLike[str]) -> Dataset:
    root = Path(data_dir)
    _check_local(str(root), spec.name, spec)
    if not root.is_dir():
        raise NotADirectoryError(f"data_dir for {spec.name!r} is not a directory: {root}")
    files = [p for p in root.rglob("*") if p.is_file()]
    for suffix, builder in _BUILDERS.items():
        found = [p for p in files if p.suffix.lower() == suffix]
        if found:
            in_split = [p for p in found if split in p.relative_to(root).as_posix()]
            chosen = in_split or found
            out = datasets.load_dataset(
                builder, data_files={split: [str(p) for p in chosen]}, split=split
            )
            assert isinstance(out, Dataset)
            return out
    if any(p.suffix.lower() in _IMAGE_SUFFIXES for p in files):
        out = datasets.load_dataset("imagefolder", data_dir=str(root), split=split)
        assert isinstance(out, Dataset)
        return out
    raise FileNotFoundError(
        f"no data files for {spec.name!r} under {root}: expected {sorted(_BUILDERS)} files "
        f"or an imagefolder tree of {list(_IMAGE_SUFFIXES)} images"
    )


def _from_hub(spec: HubSpec, split: str, cache_dir: str | None, revision: str | None) -> Dataset:
    hub_split = spec.splits.get(split, split)
    try:
        out = datasets.load_dataset(
            spec.path, split=hub_split, cache_dir=cache_dir, revision=revision
        )
    except Exception as err:
        raise DatasetUnavailableError(
            f"could not load {spec.name!r} (split {hub_split!r}) from the Hugging Face Hub "
            f"repository {spec.path}: {type(err).__name__}: {err}. Without network, copy its "
            "parquet files to this machine and pass data_files= or data_dir=."
        ) from err
    assert isinstance(out, Dataset)
    return out


# --------------------------------------------------------------------------- mapping
def voc_palette() -> np.ndarray:
    """Return the standard Pascal VOC colour map: id -> RGB."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def mask_ids(mask: Any) -> np.ndarray:
    """Class ids ``(H, W)`` of a VOC mask given as ids (mode P/L) or as VOC colours (RGB)."""
    if isinstance(mask, PILImage.Image) and mask.mode not in ("RGB", "RGBA"):
        return np.asarray(mask).astype(np.int64)
    arr = np.asarray(mask.convert("RGB") if isinstance(mask, PILImage.Image) else mask)
    if arr.ndim == 2:
        return arr.astype(np.int64)
    code = (arr[..., 0].astype(np.int64) << 16) | (arr[..., 1].astype(np.int64) << 8) | arr[..., 2]
    pal = voc_palette().astype(np.int64)
    keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = dict(zip(keys[:21].tolist(), range(21), strict=True))
    lut[int(keys[VOC_VOID])] = VOC_VOID
    ids = np.full(code.shape, VOC_VOID, dtype=np.int64)
    for key, idx in lut.items():
        ids[code == key] = idx
    return ids


def _add_mask_labels(ds: Dataset, spec: HubSpec) -> Dataset:
    """Add ``label`` (dominant object class, 0 if none) and, for multi-label, ``labels``.

    Masks stored as VOC colours (RGB) are rewritten as class-id images on the way.
    """
    num_objects = len(VOC_CLASSES) - 1
    coloured = len(ds) > 0 and getattr(ds[0]["mask"], "mode", "L") in ("RGB", "RGBA")

    def fn(masks: list[Any]) -> dict[str, list[Any]]:
        label, labels, rewritten = [], [], []
        for m in masks:
            ids = mask_ids(m)
            if coloured:
                rewritten.append(PILImage.fromarray(ids.astype(np.uint8)))
            counts = np.bincount(ids[ids < len(VOC_CLASSES)].ravel(), minlength=len(VOC_CLASSES))
            counts[0] = 0
            label.append(int(counts.argmax()) if counts.any() else 0)
            labels.append((counts[1:] > 0).astype(np.float32).tolist())
        out: dict[str, list[Any]] = {"label": label}
        if coloured:
            out["mask"] = rewritten
        if spec.task == "multi-label-classification":
            out["labels"] = labels
        return out

    ds = ds.map(fn, input_columns=["mask"], batched=True, batch_size=64)
    if spec.task == "multi-label-classification":
        ds = ds.remove_columns("mask")
        ds = ds.cast_column("labels", datasets.Sequence(Value("float32"), length=num_objects))
    return ds.cast_column("label", ClassLabel(names=list(VOC_CLASSES)))


def _resolve_columns(ds: Dataset, spec: HubSpec) -> Dataset:
    """Rename the spec's source columns to ours and drop the rest."""
    rename: dict[str, str] = {}
    for ours, src in spec.source_columns.items():
        if src in ds.column_names:
            rename[src] = ours
        elif ours in ds.column_names:
            rename[ours] = ours
        else:
            raise ValueError(
                f"{spec.name!r} needs a column {src!r} (or {ours!r}); the data has "
                f"{ds.column_names}"
            )
    ds = ds.select_columns(list(rename))
    ds = ds.rename_columns({k: v for k, v in rename.items() if k != v})
    for col in ("image", "mask"):
        feat = ds.features.get(col)
        if feat is not None and not isinstance(feat, Image):
            # Parquet written without Hugging Face metadata: {"bytes", "path"} structs.
            ds = ds.cast_column(col, Image())
    return ds


def _cast_label(ds: Dataset, spec: HubSpec) -> Dataset:
    feat = ds.features["label"]
    if isinstance(feat, ClassLabel):
        return ds
    names = list(spec.class_names) or [str(i) for i in range(spec.num_classes)]
    return ds.cast_column("label", ClassLabel(names=names))


def load_hub_dataset(
    name: str,
    *,
    split: str = "train",
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> Dataset:
    """Load a named real data set with our column names.

    Parameters
    ----------
    name : str
        One of :func:`list_hub_datasets`.
    split : str
        ``"train"`` or ``"test"`` (mapped to the Hub's names, e.g. VOC's ``val``).
    data_files : str, list of str or dict of split to files, optional
        Local parquet/csv/json/arrow files (glob patterns allowed) with the Hub's columns.
    data_dir : path, optional
        A local folder of such files (those whose path contains ``split`` are preferred)
        or an ``imagefolder`` tree.
    cache_dir : str, optional
        The ``datasets`` cache.
    revision : str, optional
        Hub revision, when reading from the Hub.

    Returns
    -------
    datasets.Dataset
        Columns by task: ``image`` (PIL, decoded lazily) and ``label`` (ClassLabel) for
        image classification; ``text`` and ``label`` for text classification; ``image``,
        ``mask`` (PIL ids, 255 = void boundary) and ``label`` (dominant object, the
        partition key) for segmentation; ``image``, ``labels`` (float32 multi-hot over
        the 20 VOC objects) and ``label`` for multi-label; ``image``, ``text`` (first
        caption) and ``index`` for a public set. Use
        :func:`fedmuscle_flwr.data.batches.to_batch` with ``image_size=`` to batch.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones), or missing source columns.
    FileNotFoundError
        A local file or folder that does not exist; the message names it.
    DatasetUnavailableError
        Reading from the Hub failed (no network and no local copy).
    """
    if name not in HUB_DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(list_hub_datasets())}")
    if data_files is not None and data_dir is not None:
        raise ValueError("pass data_files= or data_dir=, not both")
    spec = HUB_DATASETS[name]
    if data_files is not None:
        ds = _from_files(spec, split, data_files, cache_dir)
    elif data_dir is not None:
        ds = _from_dir(spec, split, data_dir)
    else:
        ds = _from_hub(spec, split, cache_dir, revision)
    ds = _resolve_columns(ds, spec)
    if spec.mask is not None:
        ds = _add_mask_labels(ds, spec)
    elif spec.label is not None:
        ds = _cast_label(ds, spec)
    if spec.text is not None and not isinstance(ds.features["text"], Value):
        ds = ds.map(
            lambda texts: {"text": [t[0] if len(t) else "" for t in texts]},
            input_columns=["text"],
            batched=True,
        )
    if spec.task == "public":
        ds = ds.add_column("index", np.arange(len(ds), dtype=np.int64).tolist())
    return ds
