"""Real image-caption pairs with masks, rendered from the Noto Color Emoji font.

Every fully-qualified line of Unicode's ``emoji-test.txt`` (Debian ``unicode-data``) is
drawn with Pillow from ``NotoColorEmoji.ttf`` (Debian ``fonts-noto-color-emoji``) at the
font's bitmap size (109 px) on a transparent 136x128 canvas, padded to a square and
resized to ``size``. One emoji gives: an RGBA image (the alpha channel is its foreground),
its CLDR name as a caption ("man getting massage: dark skin tone"), its group (9) and
subgroup (about 100) labels, and word labels read from the name (:data:`EMOJI_LABELS`).

Rendering all 3,655 emoji takes a few seconds, so the resized RGBA arrays are cached in
an ``.npz`` keyed by a hash of the font file, the test file and the rendering settings.
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fedmuscle_flwr.data.real.debian import EMOJI_FONT, EMOJI_TEST, debian_file
from fedmuscle_flwr.files import atomic_write, cache_dir

__all__ = [
    "EMOJI_LABELS",
    "EmojiRecord",
    "EmojiSet",
    "composite",
    "default_cache_dir",
    "emoji_multi_hot",
    "foreground_masks",
    "load_emoji",
    "name_words",
    "parse_emoji_test",
    "render_emoji",
    "skin_tone_free_name",
    "split_emoji",
]

#: Bump when rendering changes what a (font, test file, size) produces.
RENDER_VERSION = 1
#: Noto Color Emoji is a bitmap font whose only strike is 109 px.
FONT_SIZE = 109
#: Canvas that holds every glyph at FONT_SIZE (width, height).
CANVAS = (136, 128)

#: Multi-label classes: label name -> words or phrases of the CLDR name that switch it on.
EMOJI_LABELS: dict[str, tuple[str, ...]] = {
    "face": ("face",),
    "hand": ("hand", "hands", "handshake"),
    "person": ("person", "people"),
    "man": ("man", "men"),
    "woman": ("woman", "women"),
    "skin tone": ("skin tone",),
    "hair": ("hair",),
    "heart": ("heart",),
    "kiss": ("kiss",),
    "worker": ("worker",),
    "flag": ("flag",),
    "button": ("button",),
}

_LINE = re.compile(
    r"^(?P<cps>[0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*\S+\s+E(?P<ver>\d+\.\d+)\s+(?P<name>.+)$"
)


@dataclass(frozen=True)
class EmojiRecord:
    """One fully-qualified emoji of ``emoji-test.txt``.

    Attributes
    ----------
    emoji_id : int
        Position among the fully-qualified lines (file order); a stable id.
    codepoints : str
        Space-separated hex code points, e.g. ``"1F600"``.
    char : str
        The emoji as a string.
    name : str
        CLDR short name, the caption.
    group, subgroup : str
        Group and subgroup headers the line sits under.
    version : str
        Emoji version that introduced it, e.g. ``"1.0"``.
    """

    emoji_id: int
    codepoints: str
    char: str
    name: str
    group: str
    subgroup: str
    version: str


@dataclass(frozen=True)
class EmojiSet:
    """Parsed records and their rendered straight-alpha RGBA images.

    Attributes
    ----------
    records : tuple[EmojiRecord, ...]
        One per image, in file order.
    rgba : np.ndarray
        uint8 ``(N, size, size, 4)``.
    groups, subgroups : tuple[str, ...]
        Distinct groups / subgroups in file order (the label ids).
    """

    records: tuple[EmojiRecord, ...]
    rgba: np.ndarray
    groups: tuple[str, ...]
    subgroups: tuple[str, ...]

    def group_ids(self) -> np.ndarray:
        """int64 ``(N,)`` index of each record's group in :attr:`groups`."""
        lookup = {g: i for i, g in enumerate(self.groups)}
        return np.array([lookup[r.group] for r in self.records], dtype=np.int64)

    def subgroup_ids(self) -> np.ndarray:
        """int64 ``(N,)`` index of each record's subgroup in :attr:`subgroups`."""
        lookup = {g: i for i, g in enumerate(self.subgroups)}
        return np.array([lookup[r.subgroup] for r in self.records], dtype=np.int64)


def parse_emoji_test(path: str | Path) -> list[EmojiRecord]:
    """Parse the fully-qualified emoji of an ``emoji-test.txt`` file, in file order."""
    records: list[EmojiRecord] = []
    group = subgroup = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif (m := _LINE.match(line.rstrip("\n"))) is not None:
                cps = m["cps"].split()
                records.append(
                    EmojiRecord(
                        emoji_id=len(records),
                        codepoints=" ".join(cps),
                        char="".join(chr(int(c, 16)) for c in cps),
                        name=m["name"].strip(),
                        group=group,
                        subgroup=subgroup,
                        version=m["ver"],
                    )
                )
    if not records:
        raise ValueError(f"no fully-qualified emoji found in {path}")
    return records


def render_emoji(records: list[EmojiRecord], font_path: str | Path, size: int) -> np.ndarray:
    """Render ``records`` to straight-alpha RGBA arrays.

    Parameters
    ----------
    records : list[EmojiRecord]
        Emoji to draw.
    font_path : str or Path
        ``NotoColorEmoji.ttf``.
    size : int
        Output height and width; the 136x128 canvas is padded to 136x136 first, so the
        aspect ratio is kept.

    Returns
    -------
    np.ndarray
        uint8 ``(N, size, size, 4)``; Pillow resizes RGBA with premultiplied alpha.
    """
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    side = max(CANVAS)
    offset = ((side - CANVAS[0]) // 2, (side - CANVAS[1]) // 2)
    out = np.empty((len(records), size, size, 4), dtype=np.uint8)
    for i, rec in enumerate(records):
        canvas = Image.new("RGBA", CANVAS, (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, 0), rec.char, font=font, embedded_color=True)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(canvas, offset)
        if side != size:
            square = square.resize((size, size), Image.Resampling.LANCZOS)
        out[i] = np.asarray(square)
    return out


def default_cache_dir() -> Path:
    """Return ``$FEDMUSCLE_CACHE/real``, or ``~/.cache/fedmuscle/real`` when unset."""
    return cache_dir("real")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_path(font: Path, test: Path, size: int, cache_dir: str | Path | None) -> Path:
    key = hashlib.sha256(
        f"{_file_digest(font)}|{_file_digest(test)}|{size}|{FONT_SIZE}|{CANVAS}|"
        f"{RENDER_VERSION}".encode()
    ).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"emoji-{size}-{key}.npz"


def _write_rgba(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, rgba=rgba))  # 0644: a cache may be shared


def _read_rgba(path: Path, n: int, size: int) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        rgba = npz["rgba"]
    if rgba.shape != (n, size, size, 4) or rgba.dtype != np.uint8:
        raise ValueError(f"cached rgba has shape {rgba.shape} and dtype {rgba.dtype}")
    return rgba


def load_emoji(
    size: int = 32,
    *,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> EmojiSet:
    """All fully-qualified emoji, rendered at ``size`` (from the cache when present).

    Parameters
    ----------
    size : int
        Image height and width.
    root : str or Path, optional
        File-system root of the Debian files; see :func:`~.debian.debian_root`.
    cache_dir : str or Path, optional
        Cache folder; :func:`default_cache_dir` when omitted.
    use_cache : bool
        Read and write the cache (default) or always render.

    Raises
    ------
    MissingDebianPackageError
        When ``unicode-data`` or ``fonts-noto-color-emoji`` is not installed.
    """
    test = debian_file(EMOJI_TEST, root=root)
    font = debian_file(EMOJI_FONT, root=root)
    records = parse_emoji_test(test)
    rgba: np.ndarray | None = None
    path = _cache_path(font, test, size, cache_dir) if use_cache else None
    if path is not None and path.exists():
        try:
            rgba = _read_rgba(path, len(records), size)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"emoji cache {path} unreadable ({err}); re-rendering", stacklevel=2)
    if rgba is None:
        rgba = render_emoji(records, font, size)
        if path is not None:
            _write_rgba(path, rgba)
    groups = tuple(dict.fromkeys(r.group for r in records))
    subgroups = tuple(dict.fromkeys(r.subgroup for r in records))
    return EmojiSet(tuple(records), rgba, groups, subgroups)


def composite(rgba: np.ndarray, background: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """Alpha-composite straight-alpha RGBA ``(..., 4)`` over a flat colour -> uint8 RGB."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32)
    rgb = rgba[..., :3].astype(np.float32) * alpha + bg * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def foreground_masks(rgba: np.ndarray, threshold: int = 127) -> np.ndarray:
    """Boolean foreground ``alpha > threshold`` of RGBA ``(..., 4)`` arrays."""
    return rgba[..., 3] > threshold


def skin_tone_free_name(name: str) -> str:
    """The CLDR name without its skin-tone qualifiers.

    All skin-tone variants of one emoji share it, so a split by this key never puts a
    variant on the other side: ``"man getting massage: dark skin tone"`` ->
    ``"man getting massage"``; ``"man: red hair, light skin tone"`` -> ``"man: red hair"``.
    """
    base, _, qualifiers = name.partition(": ")
    kept = [q for q in qualifiers.split(", ") if q and not q.endswith("skin tone")]
    return f"{base}: {', '.join(kept)}" if kept else base


def split_emoji(
    records: list[EmojiRecord] | tuple[EmojiRecord, ...],
    *,
    seed: int,
    public_fraction: float,
    test_fraction: float,
) -> dict[str, np.ndarray]:
    """Seeded disjoint split of emoji into public, private-train and private-test.

    Emoji are grouped by :func:`skin_tone_free_name` and whole groups are assigned, so no
    skin-tone variant of an emoji leaks across sides. A share ``public_fraction`` of the
    groups goes to the public set; of the rest, ``test_fraction`` to the private test set.

    Returns
    -------
    dict[str, np.ndarray]
        ``"public"``, ``"train"``, ``"test"``: sorted int64 positions into ``records``.
    """
    for name, value in (("public_fraction", public_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    keys = [skin_tone_free_name(r.name) for r in records]
    distinct = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_public = round(public_fraction * len(distinct))
    n_test = round(test_fraction * (len(distinct) - n_public))
    side: dict[str, str] = {}
    for rank, j in enumerate(order):
        if rank < n_public:
            side[distinct[j]] = "public"
        elif rank < n_public + n_test:
            side[distinct[j]] = "test"
        else:
            side[distinct[j]] = "train"
    out = {}
    for part in ("public", "train", "test"):
        out[part] = np.array([i for i, k in enumerate(keys) if side[k] == part], dtype=np.int64)
    return out


def name_words(name: str) -> str:
    """Lower-case words of a CLDR name joined by single spaces (``’`` splits words)."""
    return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


def emoji_multi_hot(names: list[str]) -> np.ndarray:
    """float32 ``(N, len(EMOJI_LABELS))`` multi-hot of the :data:`EMOJI_LABELS` in names.

    Label ``k`` is on when one of its words or phrases occurs as whole words in the name.
    """
    out = np.zeros((len(names), len(EMOJI_LABELS)), dtype=np.float32)
    for i, name in enumerate(names):
        words = f" {name_words(name)} "
        for k, phrases in enumerate(EMOJI_LABELS.values()):
            if any(f" {p} " in words for p in phrases):
                out[i, k] = 1.0
    return out
