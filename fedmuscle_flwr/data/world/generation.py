"""Generating scenes: streams of independently seeded chunks, redrawn until every shape shows."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from fedmuscle_flwr.data.world.config import (
    CAPTION_TEMPLATES,
    CHUNK,
    GENERATOR_VERSION,
    KIND,
    SYNONYMS_PER_KIND,
    Scenes,
    WorldConfig,
)
from fedmuscle_flwr.data.world.rendering import render, sample_layout

__all__ = ["generate_scenes"]


def _stream_id(stream: str) -> int:
    return zlib.crc32(stream.encode("utf-8"))


def _generate_chunk(cfg: WorldConfig, stream: str, chunk: int) -> Scenes:
    rng = np.random.default_rng([cfg.seed, _stream_id(stream), chunk, GENERATOR_VERSION])
    shapes = sample_layout(rng, CHUNK, cfg)
    images, masks, visible = render(rng, shapes, cfg)
    present = shapes[:, :, KIND] >= 0
    for _ in range(100):
        bad = np.flatnonzero((present & (visible < cfg.min_visible_pixels)).any(axis=1))
        if bad.size == 0:
            break
        redo = sample_layout(rng, bad.size, cfg)
        images[bad], masks[bad], visible[bad] = render(rng, redo, cfg)
        shapes[bad] = redo
        present[bad] = redo[:, :, KIND] >= 0
    else:
        raise RuntimeError(
            f"could not draw scenes with min_visible_pixels={cfg.min_visible_pixels} "
            f"after 100 tries; lower it or raise image_size (config: {cfg})"
        )
    templates = rng.integers(0, len(CAPTION_TEMPLATES), size=CHUNK).astype(np.int16)
    return Scenes(images, masks, shapes, templates, _caption_names(rng, shapes, cfg))


def _caption_names(rng: np.random.Generator, shapes: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """Draw which name each shape's kind gets in the caption (0: the kind's own name).

    Drawn last, so a stream's images, masks and templates do not depend on
    ``caption_synonyms``.
    """
    u = rng.random(shapes.shape[:2])
    names = np.zeros(u.shape, np.int16)
    rare = (u < cfg.caption_synonyms) & (shapes[:, :, KIND] >= 0)
    pick = np.floor(u[rare] / cfg.caption_synonyms * SYNONYMS_PER_KIND).astype(np.int16)
    names[rare] = 1 + np.minimum(pick, SYNONYMS_PER_KIND - 1)
    return names


def generate_scenes(cfg: WorldConfig, stream: str, n: int) -> Scenes:
    """Generate the first ``n`` scenes of a stream, without the cache.

    Parameters
    ----------
    cfg : WorldConfig
        The world.
    stream : str
        Name of the random stream, e.g. ``"public"`` or ``"private/text-classification"``.
    n : int
        Number of scenes.

    Returns
    -------
    Scenes
        Deterministic in ``(cfg, stream)``; the first ``k`` scenes do not depend on ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chunks = [_generate_chunk(cfg, stream, c) for c in range(-(-n // CHUNK))]
    if not chunks:
        s = cfg.image_size
        return Scenes(
            np.zeros((0, s, s, 3), np.uint8),
            np.zeros((0, s, s), np.uint8),
            np.zeros((0, cfg.max_shapes, 4), np.int16),
            np.zeros((0,), np.int16),
            np.zeros((0, cfg.max_shapes), np.int16),
        )
    return Scenes(
        *(
            np.concatenate([getattr(c, f.name) for c in chunks])[:n]
            for f in dataclasses.fields(Scenes)
        )
    )
