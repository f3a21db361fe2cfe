"""PNG plots of a run: metric per user per round, and bytes per round (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from fedmuscle_flwr.results import RunResults

__all__ = ["plot_bytes", "plot_learning_curves", "plot_metrics"]


def plot_metrics(results: RunResults, path: Path) -> None:
    """One line per user: its primary metric per round."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for user_id, info in sorted(results.users.items()):
        points = [
            (r.round, r.metrics[user_id][info.metric])
            for r in results.rounds
            if info.metric in r.metrics.get(user_id, {})
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{user_id} ({info.model}, {info.metric})")
    ax.set_xlabel("round")
    ax.set_ylabel("primary metric (held-out)")
    ax.set_title(f"{results.config.get('algorithm', '')}: metric per user per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bytes(results: RunResults, path: Path) -> None:
    """Total uplink and downlink bytes per round."""
    rounds = [r.round for r in results.rounds]
    up = [sum(r.uplink_bytes.values()) / 2**20 for r in results.rounds]
    down = [sum(r.downlink_bytes.values()) / 2**20 for r in results.rounds]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.4
    ax.bar([x - width / 2 for x in rounds], up, width, label="uplink (Z)")
    ax.bar([x + width / 2 for x in rounds], down, width, label="downlink (payloads)")
    ax.set_xlabel("round")
    ax.set_ylabel("MiB, all users")
    ax.set_title("bytes per round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(runs: Mapping[int, Mapping[str, RunResults]], path: Path) -> None:
    """Mean primary metric over users per round, one line per column, a band over seeds.

    ``runs`` is ``{seed: {column name: results}}`` (a comparison); the line is the mean
    over seeds and the band spans their minimum to maximum.
    """
    curves: dict[str, list[list[float]]] = {}
    for by_column in runs.values():
        for name, results in by_column.items():
            per_round = []
            for record in results.rounds:
                values = [results.primary(u, m) for u, m in record.metrics.items()]
                kept = [v for v in values if v is not None]
                per_round.append(sum(kept) / len(kept) if kept else float("nan"))
            curves.setdefault(name, []).append(per_round)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, seeds in curves.items():
        length = min(len(s) for s in seeds)
        columns = list(zip(*(s[:length] for s in seeds), strict=True))
        rounds = range(1, length + 1)
        mean = [sum(c) / len(c) for c in columns]
        ax.plot(rounds, mean, label=name, linewidth=2 if name == "local" else 1.5)
        ax.fill_between(rounds, [min(c) for c in columns], [max(c) for c in columns], alpha=0.15)
    ax.set_xlabel("round")
    ax.set_ylabel("mean primary metric over users")
    ax.set_title(f"learning curves ({len(runs)} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(results: RunResults, directory: Path) -> None:
    """``metrics.png`` and ``bytes.png`` of a run, beside its results.json."""
    plot_metrics(results, directory / "metrics.png")
    plot_bytes(results, directory / "bytes.png")
