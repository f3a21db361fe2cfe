"""Procedural multi-task world: the offline default data, generated from a seed.

Every image holds 1..``max_shapes`` coloured shapes on a noisy, softly shaded background.
Exactly one shape is *large* (the scene's main shape, drawn first); the others are small,
drawn on top of it, each in its own cell of a 3x3 grid and each in its own colour. From
one scene come all the task views:

- ``label``: one class per image, by default the kind of the main (large) shape;
  ``WorldConfig.label_by`` may pick its colour, its position or the number of shapes.
- ``labels``: multi-hot over shape kinds, exactly the kinds visible in the mask.
- ``mask``: per-pixel class id, ``kind + 1`` where a shape is visible, 0 for background.
- ``text``: a caption in words naming each shape's size, colour, kind and position, main
  shape first ("a large red circle at the top left and a small blue square in the centre"),
  so every ``label_by`` choice can be read from the caption alone.

Each data set (the public image+caption set and one private set per task type) comes from
its own random stream. A stream is generated in chunks of :data:`CHUNK` scenes, each
seeded from ``(seed, stream, chunk index)``, so a smaller set is a prefix of a larger one.
Generated arrays are cached as ``.npz`` files keyed by a hash of what determines them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from datasets import Array2D, Array3D, ClassLabel, Dataset, Features, Sequence, Value

from fedmuscle_flwr.files import atomic_write

__all__ = [
    "COLOURS",
    "KINDS",
    "POSITIONS",
    "TASKS",
    "Scenes",
    "WorldConfig",
    "cache_path",
    "captions",
    "class_names",
    "default_cache_dir",
    "generate_scenes",
    "load_scenes",
    "num_classes",
    "private_dataset",
    "public_dataset",
    "scene_labels",
    "world_datasets",
]

#: Bump when the generator changes what a (config, stream, index) produces.
GENERATOR_VERSION = 2
#: Scenes per independently seeded chunk of a stream.
CHUNK = 256

TASKS: tuple[str, ...] = (
    "image-classification",
    "multi-label-classification",
    "semantic-segmentation",
    "text-classification",
)

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "ring")

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.78, 0.22),
    "blue": (0.15, 0.35, 0.98),
    "yellow": (0.97, 0.90, 0.12),
    "purple": (0.62, 0.18, 0.85),
    "cyan": (0.10, 0.88, 0.92),
}

#: Names of the 3x3 grid cells, row-major; the caption uses :data:`_POSITION_PHRASES`.
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
_POSITION_PHRASES: tuple[str, ...] = (
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
_TEMPLATES: tuple[str, ...] = ("{}", "a picture of {}", "an image showing {}", "there is {}")
_CELL_CENTRES = np.array([0.2, 0.5, 0.8], dtype=np.float32)

# Columns of Scenes.shapes.
KIND, COLOUR, SIZE, CELL = 0, 1, 2, 3
LabelBy = Literal["kind", "colour", "position", "count"]
_LABEL_BY: tuple[str, ...] = ("kind", "colour", "position", "count")
# Fields that select or label data but do not change a stream's arrays.
_NOT_RENDERED = ("label_by", "public_size", "private_size")


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
    """

    images: np.ndarray
    masks: np.ndarray
    shapes: np.ndarray
    templates: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- shapes
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


# --------------------------------------------------------------------------- generation
def _stream_id(stream: str) -> int:
    return zlib.crc32(stream.encode("utf-8"))


def _sample_layout(rng: np.random.Generator, n: int, cfg: WorldConfig) -> np.ndarray:
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


def _render(
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


def _generate_chunk(cfg: WorldConfig, stream: str, chunk: int) -> Scenes:
    rng = np.random.default_rng([cfg.seed, _stream_id(stream), chunk, GENERATOR_VERSION])
    shapes = _sample_layout(rng, CHUNK, cfg)
    images, masks, visible = _render(rng, shapes, cfg)
    present = shapes[:, :, KIND] >= 0
    for _ in range(100):
        bad = np.flatnonzero((present & (visible < cfg.min_visible_pixels)).any(axis=1))
        if bad.size == 0:
            break
        redo = _sample_layout(rng, bad.size, cfg)
        images[bad], masks[bad], visible[bad] = _render(rng, redo, cfg)
        shapes[bad] = redo
        present[bad] = redo[:, :, KIND] >= 0
    else:
        raise RuntimeError(
            f"could not draw scenes with min_visible_pixels={cfg.min_visible_pixels} "
            f"after 100 tries; lower it or raise image_size (config: {cfg})"
        )
    templates = rng.integers(0, len(_TEMPLATES), size=CHUNK).astype(np.int16)
    return Scenes(images, masks, shapes, templates)


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
        )
    return Scenes(
        *(
            np.concatenate([getattr(c, f.name) for c in chunks])[:n]
            for f in dataclasses.fields(Scenes)
        )
    )


# --------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """Return ``$FEDMUSCLE_CACHE/world``, or ``~/.cache/fedmuscle/world`` when unset."""
    root = os.environ.get("FEDMUSCLE_CACHE") or Path.home() / ".cache" / "fedmuscle"
    return Path(root) / "world"


def _cache_key(cfg: WorldConfig, stream: str, n: int) -> str:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_RENDERED}
    blob = json.dumps(
        {"cfg": fields, "stream": stream, "n": n, "version": GENERATOR_VERSION, "chunk": CHUNK},
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


# --------------------------------------------------------------------------- views
def _describe(row: np.ndarray) -> str:
    size = "large" if row[SIZE] == 1 else "small"
    colour = list(COLOURS)[row[COLOUR]]
    return f"a {size} {colour} {KINDS[row[KIND]]} {_POSITION_PHRASES[row[CELL]]}"


def captions(scenes: Scenes) -> list[str]:
    """Caption every scene: each shape in drawing order, the large main shape first."""
    out = []
    for rows, template in zip(scenes.shapes, scenes.templates, strict=True):
        parts = [_describe(r) for r in rows if r[KIND] >= 0]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        out.append(_TEMPLATES[template].format(body))
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
