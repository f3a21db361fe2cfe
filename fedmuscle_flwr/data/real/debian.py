"""Files that Debian packages install, found under a configurable root.

The offline real-data federation reads four Debian packages (see :data:`APT_PACKAGES`).
:func:`debian_file` resolves a file of one of them under the file-system root (``/``,
``$FEDMUSCLE_DEBIAN_ROOT`` or an explicit ``root``) and, when it is missing, raises
:class:`MissingDebianPackageError` whose message holds the exact ``apt-get`` command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "APT_PACKAGES",
    "EMOJI_FONT",
    "EMOJI_TEST",
    "FASHION_MNIST_DIR",
    "WORDNET_DIR",
    "DebianPath",
    "MissingDebianPackageError",
    "apt_command",
    "debian_file",
    "debian_root",
]

#: Environment variable that moves the root under which Debian paths are looked up.
ROOT_ENV = "FEDMUSCLE_DEBIAN_ROOT"


@dataclass(frozen=True)
class DebianPath:
    """A path (relative to the file-system root) installed by one Debian package.

    Attributes
    ----------
    package : str
        Debian package name, e.g. ``"dataset-fashion-mnist"``.
    path : str
        Path without the leading ``/``, e.g. ``"usr/share/wordnet"``.
    what : str
        Human-readable description used in error messages.
    """

    package: str
    path: str
    what: str


EMOJI_FONT = DebianPath(
    "fonts-noto-color-emoji",
    "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "Noto Color Emoji font",
)
EMOJI_TEST = DebianPath(
    "unicode-data", "usr/share/unicode/emoji/emoji-test.txt", "Unicode emoji test file"
)
FASHION_MNIST_DIR = DebianPath(
    "dataset-fashion-mnist", "usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files"
)
WORDNET_DIR = DebianPath("wordnet-base", "usr/share/wordnet", "WordNet 3.0 database")

#: Every Debian package the real-data federation needs (also in ``.ci/apt-packages.txt``).
APT_PACKAGES: tuple[str, ...] = (
    "dataset-fashion-mnist",
    "wordnet-base",
    "fonts-noto-color-emoji",
    "unicode-data",
)


class MissingDebianPackageError(FileNotFoundError):
    """A file that a Debian package installs is missing; the message names the install."""


def apt_command(*packages: str) -> str:
    """Return the ``apt-get install`` command line that installs ``packages``."""
    return "apt-get install -y --no-install-recommends " + " ".join(packages)


def debian_root(root: str | Path | None = None) -> Path:
    """Root under which Debian paths are looked up.

    Parameters
    ----------
    root : str or Path, optional
        Explicit root; otherwise ``$FEDMUSCLE_DEBIAN_ROOT``, otherwise ``/``.
    """
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ROOT_ENV) or "/")


def debian_file(spec: DebianPath, *parts: str, root: str | Path | None = None) -> Path:
    """Resolve ``spec`` (joined with ``parts``) under the root and check that it exists.

    Parameters
    ----------
    spec : DebianPath
        The packaged path.
    *parts : str
        Further components below ``spec.path`` (e.g. a file in a packaged folder).
    root : str or Path, optional
        See :func:`debian_root`.

    Returns
    -------
    Path
        The existing path.

    Raises
    ------
    MissingDebianPackageError
        When the path does not exist; the message names ``apt_command(spec.package)``.
    """
    path = debian_root(root).joinpath(spec.path, *parts)
    if not path.exists():
        raise MissingDebianPackageError(
            f"{spec.what} not found at {path}; it comes from the Debian package "
            f"{spec.package!r}. Install it with: {apt_command(spec.package)}"
        )
    return path
