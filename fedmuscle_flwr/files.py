"""Files the package writes: atomic writes and the root of its caches."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["PRIVATE", "PUBLIC", "atomic_write", "cache_dir"]


#: File modes: what others may read (results), what only the owner may (model state, Z).
PUBLIC, PRIVATE = 0o644, 0o600


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], *, mode: int = PUBLIC) -> None:
    """Call ``write`` on a binary handle, then rename into ``path`` with ``mode``.

    No temporary file is left behind when ``write`` fails; readers never see a partial file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir(name: str) -> Path:
    """Return ``$FEDMUSCLE_CACHE/<name>``, or ``~/.cache/fedmuscle/<name>`` when unset."""
    root = os.environ.get("FEDMUSCLE_CACHE") or Path.home() / ".cache" / "fedmuscle"
    return Path(root) / name
