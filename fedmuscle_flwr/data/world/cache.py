"""The ``.npz`` cache of generated scenes, keyed by a hash of what determines them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from fedmuscle_flwr.data.world.config import CHUNK, GENERATOR_VERSION, Scenes, WorldConfig
from fedmuscle_flwr.data.world.generation import generate_scenes
from fedmuscle_flwr.files import atomic_write, cache_dir

__all__ = ["cache_path", "default_cache_dir", "load_scenes"]

# Layout of a cache file: bump when Scenes gains or changes an array.
_CACHE_FORMAT = 2
# Fields that select or label data but do not change a stream's arrays.
_NOT_RENDERED = ("label_by", "public_size", "private_size")


def default_cache_dir() -> Path:
    """Return ``$FEDMUSCLE_CACHE/world``, or ``~/.cache/fedmuscle/world`` when unset."""
    return cache_dir("world")


def _cache_key(cfg: WorldConfig, stream: str, n: int) -> str:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_RENDERED}
    blob = json.dumps(
        {
            "cfg": fields,
            "stream": stream,
            "n": n,
            "version": GENERATOR_VERSION,
            "chunk": CHUNK,
            "format": _CACHE_FORMAT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def cache_path(cfg: WorldConfig, stream: str, n: int, cache_dir: str | Path | None = None) -> Path:
    """Path of the cache file that holds ``generate_scenes(cfg, stream, n)``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    safe = stream.replace("/", "_")
    return root / f"{safe}-{n}-{_cache_key(cfg, stream, n)}.npz"


def _read_cache(path: Path, cfg: WorldConfig, n: int) -> Scenes:
    s, m = cfg.image_size, cfg.max_shapes
    expected = {
        "images": ((n, s, s, 3), np.uint8),
        "masks": ((n, s, s), np.uint8),
        "shapes": ((n, m, 4), np.int16),
        "templates": ((n,), np.int16),
        "names": ((n, m), np.int16),
    }
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in expected}
    for name, (shape, dtype) in expected.items():
        if arrays[name].shape != shape or arrays[name].dtype != dtype:
            raise ValueError(
                f"{name} has shape {arrays[name].shape} and dtype {arrays[name].dtype}, "
                f"expected {shape} and {np.dtype(dtype)}"
            )
    return Scenes(**arrays)


def _write_cache(path: Path, scenes: Scenes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **dataclasses.asdict(scenes)))


def load_scenes(
    cfg: WorldConfig,
    stream: str,
    n: int,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> Scenes:
    """Return :func:`generate_scenes` output, read from or written to the cache.

    A cache file that cannot be read or has the wrong shapes is regenerated with a
    ``RuntimeWarning``. Writes go to a temporary file renamed into place, so concurrent
    users of the same cache never see half a file.
    """
    if not use_cache:
        return generate_scenes(cfg, stream, n)
    path = cache_path(cfg, stream, n, cache_dir)
    if path.exists():
        try:
            return _read_cache(path, cfg, n)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(
                f"world cache file {path} is unreadable ({err}); regenerating it",
                RuntimeWarning,
                stacklevel=2,
            )
    scenes = generate_scenes(cfg, stream, n)
    _write_cache(path, scenes)
    return scenes
