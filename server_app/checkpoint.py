"""The server's checkpoint: everything a run needs to continue at its first unfinished round.

Written atomically after every round beside results.json (``checkpoint.pt``): the round,
the experiment id (which keys every user's saved state), the strategy's seeded generators,
the batch and payloads in flight for the next round (keyed by user, since a resumed run's
nodes may have other ids), the results so far, and a fingerprint of the run config and the
federation file. A checkpoint of another configuration or federation is refused, naming
what differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedmuscle_flwr.config import ConfigError, RunConfig
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.files import PRIVATE, atomic_write
from fedmuscle_flwr.payload import UserPayload

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "absent_partners",
    "fingerprint",
    "load_checkpoint",
    "payloads_by_node",
    "payloads_by_user",
    "save_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.pt"
#: Keys a resumed run may change: where things go, how long to wait, how many rounds in all
#: (a finished run can be extended), not what is learned.
RESUMABLE_KEYS = frozenset(
    {
        "num-server-rounds",
        "resume-from",
        "output-dir",
        "node-wait-timeout",
        "round-timeout",
        "grid-poll-interval",
        "device",
        "allow-missing-users",
    }
)


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """What a checkpoint must agree on.

    The run config (less :data:`RESUMABLE_KEYS`) and the SHA-256 of the federation file.
    """
    source = load_federation(config.federation).source
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    values = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_KEYS}
    return {"config": values, "federation-sha256": digest}


@dataclass
class Checkpoint:
    """A run's state after ``round``."""

    round: int
    experiment: str
    fingerprint: dict[str, Any]
    generators: dict[str, torch.Tensor]
    results: dict[str, Any]
    next_round: int | None = None  # the round the payloads below are for
    next_indices: tuple[int, ...] = ()
    # user id -> payload fields (partner user ids, others, log-alpha pairs, dense parts,
    # teacher and its kind)
    next_payloads: dict[str, dict[str, Any]] = field(default_factory=dict)


def payloads_by_user(
    payloads: Mapping[int, UserPayload], user_of: Callable[[int], str]
) -> dict[str, dict[str, Any]]:
    """Payloads in flight keyed by user, partners named by user (node ids do not last)."""
    return {
        user_of(node): {
            "partners": [user_of(p) for p in payload.partner_ids],
            "others": payload.others,
            "log_alpha_pairs": payload.log_alpha_pairs,
            "aggregated": payload.aggregated,
            "log_alpha": payload.log_alpha,
            "teacher": payload.teacher,
            "teacher_kind": payload.teacher_kind,
        }
        for node, payload in payloads.items()
    }


def absent_partners(
    saved: Mapping[str, dict[str, Any]], node_of: Mapping[str, int]
) -> dict[str, int]:
    """Placeholder ids 0, 1, ... for saved partners that no node serves any more.

    Their Z is in the saved payloads, so the users they were chosen for still train with them;
    the ids only label them on the wire (uint64, distinct, never a real node's random id).
    """
    gone = sorted({p for fields_ in saved.values() for p in fields_["partners"]} - set(node_of))
    return {user: i for i, user in enumerate(gone)}


def payloads_by_node(
    saved: Mapping[str, dict[str, Any]], node_of: Mapping[str, int]
) -> tuple[dict[int, UserPayload], dict[int, str]]:
    """The saved payloads addressed to the nodes that now serve their users (others dropped).

    A partner no node serves any more is named by its :func:`absent_partners` placeholder;
    also returned: those placeholders' user ids.
    """
    absent = absent_partners(saved, node_of)
    partner_of = {**absent, **node_of}
    payloads = {
        node_of[user]: UserPayload(
            partner_ids=tuple(partner_of[p] for p in fields_["partners"]),
            others=fields_["others"],
            log_alpha_pairs=fields_["log_alpha_pairs"],
            aggregated=fields_["aggregated"],
            log_alpha=fields_["log_alpha"],
            teacher=fields_.get("teacher"),
            teacher_kind=fields_.get("teacher_kind", "classes"),
        )
        for user, fields_ in saved.items()
        if user in node_of
    }
    return payloads, {i: user for user, i in absent.items()}


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write ``directory/checkpoint.pt`` atomically (owner-only: it holds users' Z)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    atomic_write(path, lambda handle: torch.save(checkpoint.__dict__, handle), mode=PRIVATE)
    return path


def load_checkpoint(directory: Path, config: RunConfig) -> Checkpoint:
    """The checkpoint in ``directory``, checked against ``config``; errors say what to do."""
    path = Path(directory).expanduser() / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(
            f"resume-from: no {CHECKPOINT_FILE} in {directory} (give the results directory of "
            "a run, the one holding its results.json)"
        )
    try:
        data = torch.load(path, weights_only=True)
        checkpoint = Checkpoint(**data)
    except Exception as err:
        raise ConfigError(f"resume-from: {path} is unreadable ({err})") from err
    expected = fingerprint(config)
    if checkpoint.fingerprint["federation-sha256"] != expected["federation-sha256"]:
        raise ConfigError(
            f"resume-from: the federation file {config.federation!r} changed since {path} "
            "was written; resume with the federation the run started with"
        )
    saved, now = checkpoint.fingerprint["config"], expected["config"]
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ)
        raise ConfigError(
            f"resume-from: the run config differs from the checkpoint's in {detail}; resume "
            "with the configuration the run started with"
        )
    return checkpoint
