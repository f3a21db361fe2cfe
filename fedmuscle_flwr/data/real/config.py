"""What determines the real-data federation: :class:`RealDataConfig`, from run config too."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fedmuscle_flwr.data.real.wordnet import DEFAULT_WORDNET_CLASSES, LEXNAMES

__all__ = ["RealDataConfig"]

_OPTIONAL_CAPS = ("wordnet_max_per_class", "fashion_train_size", "fashion_test_size")


@dataclass(frozen=True)
class RealDataConfig:
    """What determines the real-data federation.

    Parameters
    ----------
    seed : int
        Seed of the emoji public/private split, the private train/test splits and the
        WordNet class sampling.
    image_size : int
        Height and width of every image (emoji and Fashion-MNIST).
    public_fraction : float
        Share of emoji (grouped by name without skin tone) in the public set; the rest
        are held out for the private multi-label and segmentation sets.
    test_fraction : float
        Share of the held-out emoji and of each WordNet class in the test split.
    background : tuple[int, int, int]
        RGB colour the transparent emoji are composited over.
    mask_threshold : int
        A pixel is foreground when its alpha (0..255) is above this.
    segmentation : {"group", "binary"}
        Mask classes: ``group`` gives foreground pixels the class ``group id + 1`` (10
        classes with background); ``binary`` gives them 1 (2 classes).
    wordnet_classes : tuple[str, ...]
        Lexnames used as text classes, in label order.
    wordnet_max_per_class : int or None
        Cap on synsets per class before the train/test split (None: all).
    fashion_train_size, fashion_test_size : int or None
        Keep only the first examples of each Fashion-MNIST split (None: 60k / 10k).
    fashion_rgb : bool
        Store Fashion-MNIST images as ``(S, S, 3)``; by default they stay grey
        ``(S, S)`` (a quarter of the memory) and :func:`fedmuscle_flwr.data.batches.to_batch`
        repeats them to three channels.
    root : str or None
        File-system root of the Debian files (None: ``$FEDMUSCLE_DEBIAN_ROOT`` or ``/``).
    cache_dir : str or None
        Emoji render cache (None: ``$FEDMUSCLE_CACHE/real`` or ``~/.cache/fedmuscle/real``).
    use_cache : bool
        Read and write the emoji render cache.
    """

    seed: int = 0
    image_size: int = 32
    public_fraction: float = 0.5
    test_fraction: float = 0.2
    background: tuple[int, int, int] = (128, 128, 128)
    mask_threshold: int = 127
    segmentation: Literal["group", "binary"] = "group"
    wordnet_classes: tuple[str, ...] = DEFAULT_WORDNET_CLASSES
    wordnet_max_per_class: int | None = 1000
    fashion_train_size: int | None = None
    fashion_test_size: int | None = None
    fashion_rgb: bool = False
    root: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        for name in ("public_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if not 0 <= self.mask_threshold < 255:
            raise ValueError(f"mask_threshold must be in [0, 255), got {self.mask_threshold}")
        if self.segmentation not in ("group", "binary"):
            raise ValueError(f"segmentation must be 'group' or 'binary', got {self.segmentation!r}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be three values in [0, 255], got {self.background}")
        if not self.wordnet_classes:
            raise ValueError("wordnet_classes must not be empty")
        unknown = [name for name in self.wordnet_classes if name not in LEXNAMES]
        if unknown:
            raise ValueError(f"unknown lexnames {unknown}; known: {', '.join(LEXNAMES)}")
        for name in ("wordnet_max_per_class", "fashion_train_size", "fashion_test_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive or None, got {value}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RealDataConfig:
        """Build from flat run-config values; keys may use ``-`` for ``_``.

        Tuple fields accept comma-separated strings (``"noun.animal,noun.plant"``,
        ``"255,255,255"``); the optional caps (``wordnet_max_per_class``,
        ``fashion_train_size``, ``fashion_test_size``) take 0 for None (no cap), as TOML
        has no null; unknown keys raise ``ValueError``.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ValueError(f"unknown real-data option {key!r}; known: {sorted(fields)}")
            if name in ("wordnet_classes", "background") and isinstance(value, str):
                parts = [p.strip() for p in value.split(",") if p.strip()]
                value = tuple(int(p) for p in parts) if name == "background" else tuple(parts)
            if name in _OPTIONAL_CAPS and value == 0:
                value = None
            kwargs[name] = value
        return cls(**kwargs)
