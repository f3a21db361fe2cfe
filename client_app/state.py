"""Client state on disk, keyed by experiment and user, one file per round.

Flower's deployment runtime starts a new ClientApp process for every message, and a
simulation's Ray actors serve many nodes; so the trainer's state (adapters, heads,
projection, optimiser, batch order, random state) is saved after every round under
``<state root>/<experiment>/<user id>/round-<r>.pt`` and restored before the next. The
experiment id comes from the server (a fresh run draws a new one, a resumed run keeps its
own), so a resumed run, a restarted SuperNode or one that came back with another node id
continues the user's own model, and state of another experiment is never picked up.

Round ``r`` starts from the newest state saved after a round before ``r``: after a crash
in round ``r`` (some users saved ``r`` already) a resumed round ``r`` starts again from
``r - 1`` for everyone. Within one process the built trainer is reused while the file
it came from is still the one to start from.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedmuscle_flwr.files import PRIVATE, atomic_write
from fedmuscle_flwr.training import Trainer

__all__ = ["StateStore", "default_state_root", "forget_trainers"]

#: State files kept per user (older ones are deleted after each save).
KEEP_ROUNDS = 3
_ROUND_FILE = re.compile(r"round-(\d+)\.pt")
_CACHE: dict[Path, tuple[Path, int, Trainer]] = {}  # directory -> (file, mtime_ns, trainer)


def forget_trainers() -> None:
    """Drop the trainers this process keeps, so the next round restores from disk."""
    _CACHE.clear()


def default_state_root() -> Path:
    """``$FEDMUSCLE_STATE_DIR``, else ``~/.cache/fedmuscle/state``."""
    return Path(
        os.environ.get("FEDMUSCLE_STATE_DIR", Path.home() / ".cache" / "fedmuscle" / "state")
    )


class StateStore:
    """Where one user's trainer state lives for one experiment."""

    def __init__(self, root: Path, experiment: str, user_id: str) -> None:
        for name, value in (("experiment", experiment), ("user id", user_id)):
            if not value or "/" in value or value.startswith("."):
                raise ValueError(f"{name} {value!r} cannot name a state directory")
        self.directory = Path(root).expanduser() / experiment / user_id

    def path(self, round_id: int) -> Path:
        """The state saved after ``round_id``."""
        return self.directory / f"round-{round_id}.pt"

    def saved_rounds(self) -> list[int]:
        """Rounds with a saved state, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_ROUND_FILE.fullmatch(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def start_of(self, round_id: int) -> Path | None:
        """The state round ``round_id`` starts from: the newest saved before it, if any."""
        earlier = [r for r in self.saved_rounds() if r < round_id]
        return self.path(earlier[-1]) if earlier else None

    def open(self, round_id: int, build: Callable[[], Trainer]) -> Trainer:
        """The trainer for ``round_id``: cached in this process if current, else restored."""
        start = self.start_of(round_id)
        cached = _CACHE.get(self.directory)
        if start is None:
            return build()
        mtime = start.stat().st_mtime_ns
        if cached is not None and cached[:2] == (start, mtime):
            return cached[2]
        trainer = build()
        try:
            state: dict[str, Any] = torch.load(
                start, map_location=trainer.device, weights_only=True
            )
            trainer.load_state_dict(state)
        except (
            OSError,
            RuntimeError,
            ValueError,
            KeyError,
            EOFError,
            pickle.UnpicklingError,
        ) as err:
            raise RuntimeError(
                f"cannot restore client state from {start} ({err}); delete {self.directory} "
                "to start this user afresh"
            ) from err
        return trainer

    def save(self, trainer: Trainer, round_id: int) -> None:
        """Write the state after ``round_id`` atomically, drop old ones, cache the trainer."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(round_id)
        atomic_write(path, lambda f: torch.save(trainer.state_dict(), f), mode=PRIVATE)
        for old in self.saved_rounds()[:-KEEP_ROUNDS]:
            self.path(old).unlink(missing_ok=True)
        _CACHE[self.directory] = (path, path.stat().st_mtime_ns, trainer)
