"""WordNet 3.0 glosses labelled by lexicographer file (Debian ``wordnet-base``).

Every synset line of ``data.noun`` / ``data.verb`` / ``data.adj`` / ``data.adv`` carries
a lexicographer-file number (its coarse semantic class, e.g. ``noun.animal``) and a gloss
(definition and examples). Gloss -> lexname is a real text-classification task with 45
classes; :data:`DEFAULT_WORDNET_CLASSES` keeps the 16 largest noun and verb classes.

Debian ships no ``lexnames`` file (only the ``lexnames(5WN)`` manual page), so the fixed
WordNet 3.0 number -> name table is :data:`LEXNAMES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmuscle_flwr.data.real.debian import WORDNET_DIR, debian_file

__all__ = [
    "DEFAULT_WORDNET_CLASSES",
    "LEXNAMES",
    "Gloss",
    "parse_wordnet",
    "sample_glosses",
]

#: WordNet 3.0 lexicographer files, indexed by the number in the data files.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip

#: The 16 largest noun and verb lexnames of WordNet 3.0 (each has at least 2,016 synsets).
DEFAULT_WORDNET_CLASSES: tuple[str, ...] = (
    "noun.artifact", "noun.person", "noun.plant", "noun.animal", "noun.act",
    "noun.communication", "noun.state", "noun.location", "noun.attribute",
    "noun.substance", "noun.cognition", "noun.group", "noun.food", "verb.change",
    "verb.contact", "noun.body",
)  # fmt: skip

_POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}


@dataclass(frozen=True)
class Gloss:
    """One synset: its gloss and lexname.

    Attributes
    ----------
    offset : str
        Byte offset of the synset in its data file (with ``pos``, a unique id).
    pos : str
        ``"noun"``, ``"verb"``, ``"adj"`` or ``"adv"``.
    lexname : str
        Lexicographer file, e.g. ``"noun.animal"``.
    lemmas : tuple[str, ...]
        Words of the synset (underscores as spaces).
    gloss : str
        Definition and examples.
    """

    offset: str
    pos: str
    lexname: str
    lemmas: tuple[str, ...]
    gloss: str


def _parse_line(line: str, pos: str) -> Gloss:
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    n_words = int(fields[3], 16)
    lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(n_words))
    return Gloss(fields[0], pos, LEXNAMES[int(fields[1])], lemmas, gloss.strip())


def parse_wordnet(
    pos: Iterable[str] = ("noun", "verb", "adj", "adv"),
    *,
    lexnames: Iterable[str] | None = None,
    root: str | Path | None = None,
) -> list[Gloss]:
    """Parse the synsets of the given parts of speech (license header lines skipped).

    Parameters
    ----------
    pos : Iterable[str]
        Parts of speech whose ``data.<pos>`` files are read.
    lexnames : Iterable[str], optional
        Keep only synsets of these lexnames (faster than filtering afterwards).
    root : str or Path, optional
        File-system root of the Debian files.

    Raises
    ------
    MissingDebianPackageError
        When ``wordnet-base`` is not installed.
    """
    wanted = None if lexnames is None else {f"{LEXNAMES.index(n):02d}" for n in lexnames}
    out: list[Gloss] = []
    for p in pos:
        if p not in _POS_FILES:
            raise ValueError(f"unknown part of speech {p!r}; expected one of {sorted(_POS_FILES)}")
        path = debian_file(WORDNET_DIR, _POS_FILES[p], root=root)
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or (wanted is not None and line[9:11] not in wanted):
                    continue
                out.append(_parse_line(line, p))
    return out


def sample_glosses(
    glosses: list[Gloss],
    classes: tuple[str, ...],
    *,
    max_per_class: int | None,
    test_fraction: float,
    seed: int,
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Seeded, class-balanced train/test split of the glosses of ``classes``.

    Each class is shuffled, capped at ``max_per_class`` synsets, and its first
    ``round(test_fraction * n)`` synsets go to the test split.

    Returns
    -------
    dict[str, tuple[list[str], np.ndarray]]
        ``"train"`` and ``"test"``: glosses and int64 labels (positions in ``classes``).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unknown = sorted(set(classes) - set(LEXNAMES))
    if unknown:
        raise ValueError(f"unknown lexnames {unknown}; known: {', '.join(LEXNAMES)}")
    by_class: dict[str, list[str]] = {name: [] for name in classes}
    for g in glosses:
        if g.lexname in by_class and g.gloss:
            by_class[g.lexname].append(g.gloss)
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, lexname in enumerate(classes):
        texts = by_class[lexname]
        if not texts:
            raise ValueError(f"no glosses of class {lexname!r} in the parsed synsets")
        order = rng.permutation(len(texts))[:max_per_class]
        n_test = round(test_fraction * len(order))
        for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
            parts[split][0].extend(texts[i] for i in idx)
            parts[split][1].extend([label] * len(idx))
    return {k: (t, np.asarray(y, dtype=np.int64)) for k, (t, y) in parts.items()}
