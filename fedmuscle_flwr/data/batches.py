"""Collation of data-set rows into the tensor batches that models and tasks consume.

A batch is a dict: ``"image"`` float32 ``(B, 3, H, W)`` in [0, 1]; ``"text"`` list of
str; ``"label"`` int64 ``(B,)``; ``"labels"`` float32 multi-hot ``(B, K)``; ``"mask"``
int64 ``(B, H, W)`` class ids with 0 for background; ``"index"`` int64 ``(B,)``. Only the
keys present in the input appear; other keys pass through unchanged.

Images may arrive as uint8/int arrays ``(B, H, W, 3)`` or ``(B, H, W)`` (grey), float
arrays already in [0, 1], or PIL images of any size (then ``image_size`` resizes them, and
masks with them, nearest-neighbour).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["Batch", "CollatedSplit", "collate", "to_batch"]

Batch = dict[str, Any]


def _resize(img: Image.Image, size: int | None, resample: Image.Resampling) -> Image.Image:
    if size is None or img.size == (size, size):
        return img
    return img.resize((size, size), resample=resample)


def _image_array(value: Any, size: int | None) -> np.ndarray:
    if isinstance(value, Image.Image):
        arr = np.asarray(_resize(value.convert("RGB"), size, Image.Resampling.BILINEAR))
        return arr[None]
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3):  # one HWC image
        arr = arr[None]
    if arr.ndim == 2:  # one grey image
        arr = arr[None]
    return arr


def _images(value: Any, size: int | None) -> torch.Tensor:
    if isinstance(value, np.ndarray) and value.dtype != object:
        arrays = [value]
    else:
        arrays = [_image_array(v, size) for v in value]
    if not arrays:
        raise ValueError("an image batch needs at least one image")
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images of different shapes {sorted(shapes)}; pass image_size=")
    arr = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    if arr.ndim == 3:  # grey (B, H, W)
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (B, H, W, 3), got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    scale = 255.0 if np.issubdtype(arr.dtype, np.integer) else 1.0
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    return (tensor.to(torch.float32) / scale).contiguous()


def _masks(value: Any, size: int | None) -> torch.Tensor:
    if isinstance(value, np.ndarray) and value.dtype != object:
        arr = value if value.ndim == 3 else value[None]
    else:
        arr = np.stack(
            [
                np.asarray(_resize(v, size, Image.Resampling.NEAREST))
                if isinstance(v, Image.Image)
                else np.asarray(v)
                for v in value
            ]
        )
    if arr.ndim != 3:
        raise ValueError(f"expected masks (B, H, W), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr).astype(np.int64))


def to_batch(examples: Mapping[str, Any], *, image_size: int | None = None) -> Batch:
    """Convert a columnar slice (``dataset[i:j]``) into a tensor batch.

    Parameters
    ----------
    examples : Mapping[str, Any]
        Column name to values for ``B`` rows, e.g. a slice of a numpy-formatted data set.
    image_size : int, optional
        Resize PIL images and masks to ``image_size x image_size`` (arrays are kept).

    Returns
    -------
    dict
        The batch; see the module docstring for keys, dtypes and shapes.
    """
    batch: Batch = {}
    for key, value in examples.items():
        if key == "image":
            batch[key] = _images(value, image_size)
        elif key == "mask":
            batch[key] = _masks(value, image_size)
        elif key in ("label", "index"):
            batch[key] = torch.as_tensor(np.asarray(value), dtype=torch.int64).reshape(-1)
        elif key == "labels":
            labels = np.asarray(value, dtype=np.float32)
            batch[key] = torch.from_numpy(labels[None] if labels.ndim == 1 else labels)
        elif key == "text":
            batch[key] = [value] if isinstance(value, str) else [str(t) for t in value]
        else:
            batch[key] = value
    return batch


def collate(rows: Sequence[Mapping[str, Any]], *, image_size: int | None = None) -> Batch:
    """Collate a list of rows (``dataset[i]`` each), e.g. as a DataLoader ``collate_fn``.

    Images given as arrays are stacked, PIL images converted (and resized when
    ``image_size`` is given); see :func:`to_batch`.
    """
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    columns: dict[str, Any] = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if key in ("image", "mask") and not any(isinstance(v, Image.Image) for v in values):
            columns[key] = np.stack([np.asarray(v) for v in values])
        else:
            columns[key] = values
    return to_batch(columns, image_size=image_size)


class CollatedSplit:
    """A data-set split converted to one tensor batch once, then indexed by rows.

    Converting rows (arrow to numpy to tensors) costs as much as a small model's training
    step; a split of at most ``max_rows`` rows is converted on first use, in chunks, and
    every later batch is an index into it, equal to ``to_batch(dataset[rows])``. Larger
    splits, or columns that are neither tensors nor lists, are converted per batch.
    """

    def __init__(self, dataset: Any, *, image_size: int | None, max_rows: int = 20_000) -> None:
        self.dataset = dataset
        self.image_size = image_size
        self.max_rows = max_rows
        self._whole: Batch | None = None
        self._cacheable = len(dataset) <= max_rows

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, rows: Sequence[int]) -> Batch:
        """The batch of ``rows``, in that order."""
        rows = list(rows)
        if self._cacheable and self._whole is None:
            self._whole = self._collate_all()
        if self._whole is None:
            return to_batch(self.dataset[rows], image_size=self.image_size)
        index = torch.as_tensor(rows, dtype=torch.int64)
        return {
            k: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in rows]
            for k, v in self._whole.items()
        }

    def _collate_all(self, chunk: int = 1024) -> Batch | None:
        parts = [
            to_batch(self.dataset[start : start + chunk], image_size=self.image_size)
            for start in range(0, len(self.dataset), chunk)
        ]
        if not parts:
            return None
        whole: Batch = {}
        for key, first in parts[0].items():
            if isinstance(first, torch.Tensor):
                whole[key] = torch.cat([p[key] for p in parts])
            elif isinstance(first, list):
                whole[key] = [v for p in parts for v in p[key]]
            else:  # a column this cache cannot index: convert per batch instead
                self._cacheable = False
                return None
        return whole
