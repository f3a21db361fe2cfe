"""Rasterising scenes: the shape masks, the random layout, images and class-id masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedmuscle_flwr.data.world.config import (
    CELL,
    COLOUR,
    COLOURS,
    KIND,
    POSITIONS,
    SIZE,
    WorldConfig,
)

__all__ = ["render", "sample_layout"]

_CELL_CENTRES = np.array([0.2, 0.5, 0.8], dtype=np.float32)


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.82


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Apex up at v = -1, base at v = 0.8 with half-width 1.
    return (v <= 0.8) & (np.abs(u) <= (v + 1.0) / 1.8)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 1.1


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5 * 0.5)


_SHAPE_FNS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _circle,
    _square,
    _triangle,
    _cross,
    _diamond,
    _ring,
)


def sample_layout(rng: np.random.Generator, n: int, cfg: WorldConfig) -> np.ndarray:
    """Draw ``(n, max_shapes, 4)`` shape rows; the main shape is row 0 and large."""
    m = cfg.max_shapes
    counts = rng.integers(cfg.min_shapes, cfg.max_shapes + 1, size=n)
    kinds = rng.integers(0, cfg.num_kinds, size=(n, m))
    colours = np.argsort(rng.random((n, cfg.num_colours)), axis=1)[:, :m]
    cells = np.argsort(rng.random((n, len(POSITIONS))), axis=1)[:, :m]
    sizes = np.zeros((n, m), dtype=np.int64)
    sizes[:, 0] = 1
    shapes = np.stack([kinds, colours, sizes, cells], axis=-1).astype(np.int16)
    shapes[np.arange(m)[None, :] >= counts[:, None]] = -1
    return shapes


def render(
    rng: np.random.Generator, shapes: np.ndarray, cfg: WorldConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise scenes; return images (uint8), masks (uint8) and visible pixels per shape."""
    n, m, _ = shapes.shape
    s = cfg.image_size
    grid = (np.arange(s, dtype=np.float32) + 0.5) / s
    offsets = rng.uniform(-cfg.jitter, cfg.jitter, size=(n, m, 2)).astype(np.float32)
    instance = np.zeros((n, s, s), dtype=np.int8)
    for j in range(m):
        present = shapes[:, j, KIND] >= 0
        cell = np.where(present, shapes[:, j, CELL], 0)
        cx = _CELL_CENTRES[cell % 3] + offsets[:, j, 0]
        cy = _CELL_CENTRES[cell // 3] + offsets[:, j, 1]
        radius = np.where(shapes[:, j, SIZE] == 1, cfg.large_radius, cfg.small_radius)
        radius = radius.astype(np.float32)
        u = (grid[None, None, :] - cx[:, None, None]) / radius[:, None, None]
        v = (grid[None, :, None] - cy[:, None, None]) / radius[:, None, None]
        for k in range(cfg.num_kinds):
            sel = np.flatnonzero(present & (shapes[:, j, KIND] == k))
            if sel.size:
                inside = _SHAPE_FNS[k](u[sel], v[sel])
                instance[sel] = np.where(inside, j + 1, instance[sel])
    visible = np.stack([(instance == j + 1).sum(axis=(1, 2)) for j in range(m)], axis=1)

    # Class ids: instance 0 -> background, instance j+1 -> kind of shape j, plus one.
    rows = np.arange(n)[:, None, None]
    kind_lut = np.concatenate([np.zeros((n, 1), np.uint8), (shapes[:, :, KIND] + 1)], axis=1)
    masks = kind_lut.astype(np.uint8)[rows, instance]

    palette = np.asarray(list(COLOURS.values()), dtype=np.float32)
    shape_rgb = palette[np.clip(shapes[:, :, COLOUR], 0, None)]  # (n, m, 3)
    shape_rgb = shape_rgb + rng.uniform(-0.05, 0.05, size=shape_rgb.shape).astype(np.float32)
    base = rng.uniform(0.04, 0.30, size=(n, 1, 1, 3)).astype(np.float32)
    slope = rng.uniform(-0.12, 0.12, size=(n, 2)).astype(np.float32)
    shade = slope[:, 0, None, None] * (grid[None, :, None] - 0.5) + slope[:, 1, None, None] * (
        grid[None, None, :] - 0.5
    )
    img = base + shade[..., None]
    for j in range(m):
        img = np.where((instance == j + 1)[..., None], shape_rgb[:, j, None, None, :], img)
    if cfg.noise_std > 0:
        noise = rng.standard_normal(size=img.shape, dtype=np.float32)
        noise *= np.float32(cfg.noise_std)
        img += noise
    np.clip(img, 0.0, 1.0, out=img)
    img *= np.float32(255.0)
    img += np.float32(0.5)
    return img.astype(np.uint8), masks, visible
