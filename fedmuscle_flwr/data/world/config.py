"""What determines the world: its vocabulary (kinds, colours, positions), its config and scenes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedmuscle_flwr.tasks import BUILTIN_TASKS

__all__ = [
    "CAPTION_TEMPLATES",
    "CELL",
    "CHUNK",
    "COLOUR",
    "COLOURS",
    "GENERATOR_VERSION",
    "KIND",
    "KINDS",
    "KIND_SYNONYMS",
    "POSITIONS",
    "POSITION_PHRASES",
    "SIZE",
    "SYNONYMS_PER_KIND",
    "TASKS",
    "LabelBy",
    "Scenes",
    "WorldConfig",
]

#: Bump when the generator changes what a (config, stream, index) produces.
GENERATOR_VERSION = 2
#: Scenes per independently seeded chunk of a stream.
CHUNK = 256

#: The task types the world provides data for: the built-in ones of the task registry.
TASKS: tuple[str, ...] = BUILTIN_TASKS

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "ring")

#: How many rarer names each kind has in :data:`KIND_SYNONYMS`.
SYNONYMS_PER_KIND = 8
#: Rarer names of each kind, which a caption uses instead of the kind's name with
#: probability ``WorldConfig.caption_synonyms`` (each equally often): a text user must learn
#: them from few labelled captions, or from the public set, where images show what they name.
KIND_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "dot", "orb", "ball", "coin", "blob", "bead", "pearl"),
    "square": ("box", "block", "tile", "cube", "brick", "panel", "slab", "crate"),
    "triangle": ("wedge", "pyramid", "arrowhead", "spike", "cone", "tent", "fin", "delta"),
    "cross": ("plus", "saltire", "crux", "crossing", "asterisk", "cruciform", "junction", "mark"),
    "diamond": ("rhombus", "lozenge", "kite", "gem", "rhomb", "jewel", "facet", "crystal"),
    "ring": ("hoop", "donut", "loop", "annulus", "halo", "band", "wreath", "torus"),
}

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.78, 0.22),
    "blue": (0.15, 0.35, 0.98),
    "yellow": (0.97, 0.90, 0.12),
    "purple": (0.62, 0.18, 0.85),
    "cyan": (0.10, 0.88, 0.92),
}

#: Names of the 3x3 grid cells, row-major; the caption uses :data:`POSITION_PHRASES`.
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
POSITION_PHRASES: tuple[str, ...] = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the centre",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)
CAPTION_TEMPLATES: tuple[str, ...] = ("{}", "a picture of {}", "an image showing {}", "there is {}")

# Columns of Scenes.shapes.
KIND, COLOUR, SIZE, CELL = 0, 1, 2, 3
LabelBy = Literal["kind", "colour", "position", "count"]
_LABEL_BY: tuple[str, ...] = ("kind", "colour", "position", "count")


@dataclass(frozen=True)
class WorldConfig:
    """What determines the procedural world.

    Parameters
    ----------
    seed : int
        Root seed; every stream and chunk derives its own seed from it.
    image_size : int
        Height and width of the square RGB images.
    num_kinds : int
        Number of shape kinds used, the first ones of :data:`KINDS`.
    num_colours : int
        Number of colours used, the first ones of :data:`COLOURS`.
    min_shapes, max_shapes : int
        Range of the number of shapes per image (inclusive).
    large_radius, small_radius : float
        Shape radii as fractions of ``image_size``.
    jitter : float
        Largest offset of a shape centre from its grid cell centre, fraction of the size.
    noise_std : float
        Standard deviation of the additive pixel noise (image values in [0, 1]).
    min_visible_pixels : int
        Each shape keeps at least this many visible pixels; scenes that break this are
        drawn again, so the multi-label set always equals the kinds in the mask.
    caption_synonyms : float
        Probability that a caption names a shape's kind by one of its rarer names
        (:data:`KIND_SYNONYMS`, uniformly) instead of the kind's name; 0 keeps every
        caption as it was before the option existed.
    label_by : {"kind", "colour", "position", "count"}
        What the single-class ``label`` is: the main shape's kind, colour or grid cell,
        or the number of shapes.
    public_size, private_size : int
        Default sizes of the public set and of each task's private set.
    """

    seed: int = 0
    image_size: int = 32
    num_kinds: int = 5
    num_colours: int = 6
    min_shapes: int = 1
    max_shapes: int = 3
    large_radius: float = 0.2
    small_radius: float = 0.11
    jitter: float = 0.05
    noise_std: float = 0.03
    min_visible_pixels: int = 4
    caption_synonyms: float = 0.0
    label_by: LabelBy = "kind"
    public_size: int = 2000
    private_size: int = 2000

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not 1 <= self.num_kinds <= len(KINDS):
            raise ValueError(f"num_kinds must be in [1, {len(KINDS)}], got {self.num_kinds}")
        if not 1 <= self.num_colours <= len(COLOURS):
            raise ValueError(f"num_colours must be in [1, {len(COLOURS)}], got {self.num_colours}")
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ValueError(
                f"need 1 <= min_shapes <= max_shapes, got {self.min_shapes}, {self.max_shapes}"
            )
        if self.max_shapes > min(self.num_colours, len(POSITIONS)):
            raise ValueError(
                f"max_shapes={self.max_shapes} exceeds the distinct colours "
                f"({self.num_colours}) or grid cells ({len(POSITIONS)}) available"
            )
        if not 0 < self.small_radius <= self.large_radius <= 0.5:
            raise ValueError(
                "need 0 < small_radius <= large_radius <= 0.5, got "
                f"{self.small_radius}, {self.large_radius}"
            )
        if not 0 <= self.jitter <= 0.15:
            raise ValueError(f"jitter must be in [0, 0.15], got {self.jitter}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.min_visible_pixels < 1:
            raise ValueError(f"min_visible_pixels must be >= 1, got {self.min_visible_pixels}")
        if not 0.0 <= self.caption_synonyms <= 1.0:
            raise ValueError(f"caption_synonyms must be in [0, 1], got {self.caption_synonyms}")
        if self.label_by not in _LABEL_BY:
            raise ValueError(f"label_by must be one of {_LABEL_BY}, got {self.label_by!r}")
        if self.public_size < 0 or self.private_size < 0:
            raise ValueError(
                f"sizes must be >= 0, got public_size={self.public_size}, "
                f"private_size={self.private_size}"
            )


@dataclass(frozen=True)
class Scenes:
    """Arrays of ``n`` generated scenes.

    Attributes
    ----------
    images : numpy.ndarray
        ``(n, S, S, 3)`` uint8 RGB.
    masks : numpy.ndarray
        ``(n, S, S)`` uint8 class ids: ``kind + 1`` where a shape is visible, 0 elsewhere.
    shapes : numpy.ndarray
        ``(n, max_shapes, 4)`` int16 rows ``(kind, colour, size, cell)`` in drawing order,
        the large main shape first; ``-1`` rows for absent shapes. ``size`` is 1 for large.
    templates : numpy.ndarray
        ``(n,)`` int16 caption template ids.
    names : numpy.ndarray
        ``(n, max_shapes)`` int16: which name the caption gives each shape's kind, 0 for
        the kind's own name, ``i`` for ``KIND_SYNONYMS[kind][i - 1]``.
    """

    images: np.ndarray
    masks: np.ndarray
    shapes: np.ndarray
    templates: np.ndarray
    names: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])
