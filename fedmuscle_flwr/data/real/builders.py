"""Building one split of each real data set from the raw sources of one config."""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

import numpy as np
from datasets import Array2D, Array3D, ClassLabel, Dataset, Features, Sequence, Value

from fedmuscle_flwr.data.real.columns import build_dataset
from fedmuscle_flwr.data.real.config import RealDataConfig
from fedmuscle_flwr.data.real.emoji import (
    EMOJI_LABELS,
    RENDER_VERSION,
    EmojiSet,
    composite,
    emoji_multi_hot,
    foreground_masks,
    load_emoji,
    split_emoji,
)
from fedmuscle_flwr.data.real.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from fedmuscle_flwr.data.real.wordnet import parse_wordnet, sample_glosses

__all__ = [
    "RawSources",
    "build_emoji_private",
    "build_fashion",
    "build_public",
    "build_wordnet",
]

_SPLITS = ("train", "test")


class RawSources:
    """Lazily loaded raw sources shared by the data sets built from one config."""

    def __init__(self, cfg: RealDataConfig) -> None:
        self.cfg = cfg

    @cached_property
    def emoji(self) -> EmojiSet:
        """The rendered emoji (read from or written to the render cache)."""
        c = self.cfg
        return load_emoji(c.image_size, root=c.root, cache_dir=c.cache_dir, use_cache=c.use_cache)

    @cached_property
    def emoji_split(self) -> dict[str, np.ndarray]:
        """Emoji positions of the ``public``, ``train`` and ``test`` parts."""
        c = self.cfg
        return split_emoji(
            self.emoji.records,
            seed=c.seed,
            public_fraction=c.public_fraction,
            test_fraction=c.test_fraction,
        )

    @cached_property
    def wordnet(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """WordNet glosses and labels of each split."""
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


def _emoji_columns(src: RawSources, part: str) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
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


def _emoji_masks(src: RawSources, rows: np.ndarray) -> np.ndarray:
    fg = foreground_masks(src.emoji.rgba[rows], src.cfg.mask_threshold)
    if src.cfg.segmentation == "binary":
        return fg.astype(np.uint8)
    group = src.emoji.group_ids()[rows].astype(np.uint8) + 1
    return (fg * group[:, None, None]).astype(np.uint8)


def build_public(src: RawSources, split: str, with_labels: bool = False) -> Dataset:
    """The public emoji image+caption set (single split ``train``), labels on request."""
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


def build_emoji_private(src: RawSources, split: str, task: str) -> Dataset:
    """A held-out emoji set: multi-label (word labels) or segmentation (alpha masks)."""
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


def build_fashion(src: RawSources, split: str) -> Dataset:
    """Fashion-MNIST, grey ``(S, S)`` or RGB, with its 10 classes."""
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


def build_wordnet(src: RawSources, split: str) -> Dataset:
    """WordNet glosses labelled by lexname."""
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
