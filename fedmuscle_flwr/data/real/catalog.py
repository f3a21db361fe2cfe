"""The named data sets of the real-data federation and the one each task uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from datasets import Dataset

from fedmuscle_flwr.data.real.builders import (
    RawSources,
    build_emoji_private,
    build_fashion,
    build_public,
    build_wordnet,
)
from fedmuscle_flwr.data.real.config import RealDataConfig

__all__ = ["REAL_DATASETS", "REAL_TASK_DATASETS", "RealDatasetSpec"]


@dataclass(frozen=True)
class RealDatasetSpec:
    """One named data set of the real-data federation.

    Attributes
    ----------
    name : str
        Key in :data:`REAL_DATASETS`.
    task : str
        Task id, or ``"public"`` for the public image+caption set.
    packages : tuple[str, ...]
        Debian packages it reads.
    description : str
        One line for listings.
    """

    name: str
    task: str
    packages: tuple[str, ...]
    description: str
    _build: Callable[[RawSources, str], Dataset] = dataclasses.field(repr=False, compare=False)

    def load(self, cfg: RealDataConfig | None = None, split: str = "train") -> Dataset:
        """Build this data set's ``split`` under ``cfg`` (defaults when omitted)."""
        return self.build(RawSources(cfg or RealDataConfig()), split)

    def build(self, sources: RawSources, split: str) -> Dataset:
        """Build this data set's ``split`` from raw sources shared with other sets."""
        return self._build(sources, split)


_EMOJI_PACKAGES = ("fonts-noto-color-emoji", "unicode-data")

REAL_DATASETS: Mapping[str, RealDatasetSpec] = {
    spec.name: spec
    for spec in (
        RealDatasetSpec(
            "emoji-public",
            "public",
            _EMOJI_PACKAGES,
            "Noto emoji images with their CLDR names as captions (public share)",
            build_public,
        ),
        RealDatasetSpec(
            "fashion-mnist",
            "image-classification",
            ("dataset-fashion-mnist",),
            "Fashion-MNIST, 10 clothing classes, grey repeated to RGB",
            build_fashion,
        ),
        RealDatasetSpec(
            "wordnet-lexnames",
            "text-classification",
            ("wordnet-base",),
            "WordNet 3.0 glosses labelled by lexicographer file",
            build_wordnet,
        ),
        RealDatasetSpec(
            "emoji-multilabel",
            "multi-label-classification",
            _EMOJI_PACKAGES,
            "held-out emoji, multi-hot of words in their names",
            lambda src, split: build_emoji_private(src, split, "multi-label-classification"),
        ),
        RealDatasetSpec(
            "emoji-segmentation",
            "semantic-segmentation",
            _EMOJI_PACKAGES,
            "held-out emoji, alpha masks (foreground class = group or 1)",
            lambda src, split: build_emoji_private(src, split, "semantic-segmentation"),
        ),
    )
}

#: The data set each task id uses in the real-data federation.
REAL_TASK_DATASETS: Mapping[str, str] = {
    spec.task: name for name, spec in REAL_DATASETS.items() if spec.task != "public"
}
