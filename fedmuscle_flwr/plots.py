"""PNG plots of a run: metric per user per round, and bytes per round (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from fedmuscle_flwr.results import RunResults

__all__ = ["plot_bytes", "plot_metrics"]


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
