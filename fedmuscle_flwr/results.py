"""Run results: per-round records, results.json and progress lines (the schema, no more).

Plots of a run are :mod:`fedmuscle_flwr.plots`; Delta against a local run is
:mod:`fedmuscle_flwr.delta`; markdown sections of the docs are :mod:`fedmuscle_flwr.markdown`.

Schema of ``results.json`` (documented in README.md):

- ``config``: the run configuration (run-config keys);
- ``users``: ``[{id, model, task, metric}]``, ``metric`` naming the user's primary metric;
- ``rounds``: ``[{round, metrics {user id: {name: value}}, uplink_bytes {user id: n},
  downlink_bytes {user id: n}, server_ms, seconds, replied, failed {user id: reason},
  partners {user id: [user ids]}, screening {user id: {score, excluded, ...}},
  privacy {user id: {epsilon, delta}}, teachers {user id: [user ids]}}]``;
- ``final``: ``{user id: {name: value}}``, each user's last reported metrics;
- ``status``: ``complete``, ``failed`` (``reason`` says why) or ``running`` (not finished);
  ``missing_users``: users of the federation that never had a node; ``unsampled_users``:
  users never drawn by ``fraction-train`` although every user had a node
  (``connected_nodes``: the most nodes connected at a round's start).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedmuscle_flwr.files import atomic_write

__all__ = [
    "RoundRecord",
    "RunResults",
    "UserInfo",
    "finished_run",
    "human_bytes",
    "write_json_atomic",
]


@dataclass(frozen=True)
class UserInfo:
    """Who a user is: its id, model type, task and primary metric."""

    id: str
    model: str
    task: str
    metric: str


@dataclass
class RoundRecord:
    """What happened in one round."""

    round: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    uplink_bytes: dict[str, int] = field(default_factory=dict)
    downlink_bytes: dict[str, int] = field(default_factory=dict)
    server_ms: float = 0.0
    seconds: float = 0.0
    replied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    partners: dict[str, list[str]] = field(default_factory=dict)  # the payloads sent this round
    # screening of this round's Z: {user id: {"score", "excluded", "flagged"}} (empty: off)
    screening: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    # with dp = true: {user id: {"epsilon", "delta"}} spent by the end of this round
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)
    # with distill-weight > 0: {user id: [peer ids]} whose predictions on the next round's
    # public batch make up the user's teacher in that round
    teachers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RunResults:
    """Everything a run reports; serialised to ``results.json``."""

    config: dict[str, Any]
    users: dict[str, UserInfo] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    status: str = "running"  # complete | failed | running
    reason: str = ""
    missing_users: list[str] = field(default_factory=list)
    unsampled_users: list[str] = field(default_factory=list)
    connected_nodes: int = 0  # the most nodes connected when a round picked its users

    @property
    def final(self) -> dict[str, dict[str, float]]:
        """Each user's last reported metrics."""
        last: dict[str, dict[str, float]] = {}
        for record in self.rounds:
            last.update(record.metrics)
        return last

    @property
    def complete(self) -> bool:
        """Whether every configured round was recorded (results are also written on failure)."""
        return len(self.rounds) == self.config.get("num-server-rounds")

    def users_failing_every_round(self) -> dict[str, str]:
        """Users that were left out of every round they were part of, with the last reason."""
        failed: dict[str, str] = {}
        succeeded: set[str] = set()
        for record in self.rounds:
            succeeded.update(record.replied)
            failed.update(record.failed)
        return {user: reason for user, reason in sorted(failed.items()) if user not in succeeded}

    def finish(self, federation_users: list[str], error: BaseException | None = None) -> None:
        """Set ``status``, ``reason`` and ``missing_users`` at the end of a run.

        Failed: an error stopped it, a round is missing, a user failed every round, or users
        had no node (unless the run config allows missing users).
        """
        seen = set(self.users) | {u for r in self.rounds for u in (*r.replied, *r.failed)}
        unseen = [u for u in federation_users if u not in seen]
        sampled = self.config.get("fraction-train", 1.0) < 1
        if sampled and self.connected_nodes >= len(federation_users):  # a node each: not drawn
            self.missing_users, self.unsampled_users = [], unseen
        else:
            self.missing_users, self.unsampled_users = unseen, []
        problems = []
        if error is not None:
            problems.append(str(error) or type(error).__name__)
        elif not self.complete:
            problems.append(
                f"{len(self.rounds)} of {self.config.get('num-server-rounds')} rounds recorded"
            )
        problems += [
            f"user {user} failed every round ({reason})"
            for user, reason in self.users_failing_every_round().items()
        ]
        allowed = self.config.get("allow-missing-users", False)
        if self.missing_users and error is None and not allowed:
            problems.append(
                f"users without a node: {self.missing_users} (start their SuperNodes, or set "
                "allow-missing-users=true)"
            )
        self.status = "failed" if problems else "complete"
        self.reason = "; ".join(problems)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form of the schema above."""
        return {
            "config": self.config,
            "users": [asdict(u) for u in sorted(self.users.values(), key=lambda u: u.id)],
            "rounds": [asdict(r) for r in self.rounds],
            "final": self.final,
            "status": self.status,
            "reason": self.reason,
            "missing_users": self.missing_users,
            "unsampled_users": self.unsampled_users,
            "connected_nodes": self.connected_nodes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        """Read back what :meth:`to_dict` wrote."""
        return cls(
            config=data["config"],
            users={u["id"]: UserInfo(**u) for u in data["users"]},
            rounds=[RoundRecord(**r) for r in data["rounds"]],
            status=data.get("status", "running"),
            reason=data.get("reason", ""),
            missing_users=list(data.get("missing_users", [])),
            unsampled_users=list(data.get("unsampled_users", [])),
            connected_nodes=int(data.get("connected_nodes", 0)),
        )

    def primary(self, user_id: str, metrics: dict[str, float]) -> float | None:
        """The user's primary metric in ``metrics``, if present."""
        info = self.users.get(user_id)
        return metrics.get(info.metric) if info else None

    def primary_by_task(self, record: RoundRecord) -> dict[tuple[str, str], list[float]]:
        """The users' primary metrics in ``record``, by (task, metric name), in user order."""
        by_task: dict[tuple[str, str], list[float]] = defaultdict(list)
        for user_id, metrics in record.metrics.items():
            value = self.primary(user_id, metrics)
            if value is not None:
                by_task[(self.users[user_id].task, self.users[user_id].metric)].append(value)
        return dict(by_task)

    def task_means(self, record: RoundRecord) -> dict[str, float]:
        """Mean primary metric per task in ``record``."""
        by_task: dict[str, list[float]] = defaultdict(list)
        for (task, _), values in self.primary_by_task(record).items():
            by_task[task] += values
        return {task: sum(v) / len(v) for task, v in by_task.items()}

    def progress_line(self, record: RoundRecord, num_rounds: int, sent: int) -> str:
        """One line per round: replies, mean metric per task, bytes, server time."""
        by_task = {f"{t} {m}": v for (t, m), v in self.primary_by_task(record).items()}
        tasks = ", ".join(f"{k} {statistics.fmean(v):.3f}" for k, v in sorted(by_task.items()))
        return (
            f"round {record.round}/{num_rounds}: {len(record.replied)}/{sent} users replied"
            f" | {tasks or 'no metrics'}"
            f" | up {human_bytes(sum(record.uplink_bytes.values()))}"
            f", down {human_bytes(sum(record.downlink_bytes.values()))}"
            f" | server {record.server_ms:.1f} ms | {record.seconds:.1f} s"
            + (
                f" | epsilon <= {max(p['epsilon'] for p in record.privacy.values()):.2f}"
                if record.privacy
                else ""
            )
            + (f" | left out: {', '.join(sorted(record.failed))}" if record.failed else "")
        )

    def write(self, directory: Path) -> Path:
        """Write ``directory/results.json`` atomically; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "results.json"
        write_json_atomic(path, self.to_dict())
        return path


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it into place."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def complete_runs(roots: Iterable[Path]) -> list[RunResults]:
    """Every complete run under ``roots``: each ``results.json`` at any depth, in path order."""
    runs = []
    for root in roots:
        for path in sorted(Path(root).rglob("results.json")):
            results = RunResults.from_dict(json.loads(path.read_text()))
            if results.complete:
                runs.append(results)
    return runs


def finished_run(directory: Path) -> RunResults | None:
    """The newest complete run under ``directory`` (``run-*/results.json``), if any."""
    for path in sorted(directory.glob("run-*/results.json"), key=lambda p: p.stat().st_mtime)[::-1]:
        results = RunResults.from_dict(json.loads(path.read_text()))
        if results.complete:
            return results
    return None
