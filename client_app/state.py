"""Client state on disk, keyed by run and node, so it survives a new process per message.

Flower's deployment runtime starts a new ClientApp process for every message, and a
simulation's Ray actors serve many nodes; so the trainer's state (adapters, heads,
projection, optimiser, batch order) is saved after every round under
``<state root>/run-<run id>/node-<node id>/`` and restored before the next. Within one
process, the built trainer is kept and reused while its token still matches the one on
disk (another process may have trained this node since).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedmuscle_flwr.training import Trainer

__all__ = ["StateStore", "default_state_root"]

_CACHE: dict[Path, tuple[str, Trainer]] = {}


def default_state_root() -> Path:
    """``$FEDMUSCLE_STATE_DIR``, else ``~/.cache/fedmuscle/state``."""
    return Path(
        os.environ.get("FEDMUSCLE_STATE_DIR", Path.home() / ".cache" / "fedmuscle" / "state")
    )


class StateStore:
    """Where one node's trainer state lives for one run."""

    def __init__(self, root: Path, run_id: int, node_id: int) -> None:
        self.directory = Path(root).expanduser() / f"run-{run_id}" / f"node-{node_id}"

    @property
    def token_path(self) -> Path:
        """The small file naming the last saved state."""
        return self.directory / "token.json"

    @property
    def state_path(self) -> Path:
        """The saved trainer state."""
        return self.directory / "trainer.pt"

    def token(self) -> str | None:
        """The token of the last saved state, or None if nothing was saved yet."""
        try:
            return str(json.loads(self.token_path.read_text())["token"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as err:
            raise RuntimeError(
                f"client state token {self.token_path} is unreadable ({err}); delete "
                f"{self.directory} to start this node afresh"
            ) from err

    def open(self, build: Callable[[], Trainer]) -> Trainer:
        """The node's trainer: cached in this process if current, else built and restored."""
        token = self.token()
        cached = _CACHE.get(self.directory)
        if cached is not None and token is not None and cached[0] == token:
            return cached[1]
        trainer = build()
        if token is not None:
            try:
                state: dict[str, Any] = torch.load(
                    self.state_path, map_location=trainer.device, weights_only=True
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
                    f"cannot restore client state from {self.state_path} ({err}); delete "
                    f"{self.directory} to start this node afresh"
                ) from err
        return trainer

    def save(self, trainer: Trainer) -> None:
        """Write the state, then the new token, each atomically; cache the trainer."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic(self.state_path, lambda f: torch.save(trainer.state_dict(), f))
        token = uuid.uuid4().hex
        _atomic(
            self.token_path,
            lambda f: f.write(json.dumps({"token": token, "rounds": trainer.rounds_done}).encode()),
        )
        _CACHE[self.directory] = (token, trainer)


def _atomic(path: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
