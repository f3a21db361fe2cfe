"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX gz files).

60,000 training and 10,000 test images, 28x28 grey, 10 balanced clothing classes.
Images are resized (bilinear) to the requested size and repeated to 3 channels by the
data-set builder in :mod:`~fedmuscle_flwr.data.real.federation`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedmuscle_flwr.data.real.debian import FASHION_MNIST_DIR, debian_file

__all__ = ["FASHION_MNIST_CLASSES", "load_fashion_mnist", "read_idx", "resize_grey"]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: IDX magic numbers: 0x08 (unsigned byte) data, then the number of dimensions.
_MAGIC = {1: 0x00000801, 3: 0x00000803}


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions.

    Raises
    ------
    ValueError
        When the magic number, the dimension count or the payload size is wrong.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[ndim]:
        raise ValueError(f"{path}: magic {magic:#010x}, expected {_MAGIC[ndim]:#010x}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {payload.size} bytes for dimensions {dims}")
    return payload.reshape(dims)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """float32 ``(n_out, n_in)`` triangle-filter weights, as Pillow's BILINEAR resize.

    When shrinking, the filter widens by the scale factor (antialiasing), like Pillow.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    dist = np.abs(np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support
    weights = np.clip(1.0 - dist, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_grey(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(N, H, W)`` grey images to ``(N, size, size)`` (bilinear).

    A separable matrix product per chunk; within one grey level of Pillow's BILINEAR.
    """
    if images.shape[1:] == (size, size):
        return images
    rows = _linear_weights(images.shape[1], size)
    cols = _linear_weights(images.shape[2], size)
    out = np.empty((len(images), size, size), dtype=np.uint8)
    chunk = max(1, 2**22 // (size * size))  # about 16 MiB of float32 per step
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float32)
        resized = rows @ block @ cols.T
        out[start : start + chunk] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def load_fashion_mnist(
    split: str,
    *,
    size: int = 28,
    limit: int | None = None,
    root: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one Fashion-MNIST split.

    Parameters
    ----------
    split : {"train", "test"}
        Which split.
    size : int
        Output height and width (28 keeps the originals).
    limit : int, optional
        Keep only the first ``limit`` examples (the files are already shuffled).
    root : str or Path, optional
        File-system root of the Debian files.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        uint8 grey images ``(N, size, size)`` and int64 labels ``(N,)`` in ``[0, 10)``.

    Raises
    ------
    MissingDebianPackageError
        When ``dataset-fashion-mnist`` is not installed.
    """
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_FILES)}")
    image_file, label_file = _FILES[split]
    images = read_idx(debian_file(FASHION_MNIST_DIR, image_file, root=root), 3)
    labels = read_idx(debian_file(FASHION_MNIST_DIR, label_file, root=root), 1)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels in {split}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return resize_grey(images, size), labels.astype(np.int64)
