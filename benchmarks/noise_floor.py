"""How finely the benchmark tells two models apart: split sizes and round-to-round swing.

A user's Delta is measured on its own test split, and the fallback decides on its
validation split; both are small. This prints, per user over the seeds, the size of each
split and what one test example is worth (100 / n, % of the split), and, given local runs
(``results.json`` files with ``algorithm = "local"``), how much the primary test metric moves
from one round to the next over the last rounds (mean and largest relative change, %):
a change of a user's metric smaller than these is not resolved by the benchmark. Writes
the table as JSON too.

Usage:
    python benchmarks/noise_floor.py --seeds 0 1 2 3 4 5 --runs outputs/sweep \\
        [--run-config 'validation-fraction=0.15'] [--last 4] [--output noise-floor.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from client_app.app import user_data
from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.launch import parse_toml_overrides
from fedmuscle_flwr.results import RunResults, complete_runs


def split_sizes(config: RunConfig, seeds: Sequence[int]) -> dict[str, dict[str, list[int]]]:
    """Each user's ``train``, ``validation`` and ``test`` sizes, one entry per seed: the
    splits its ClientApp trains and is scored on."""
    federation = load_federation(config.federation)
    sizes: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for seed in seeds:
        seeded = replace(config, seed=seed)
        for profile in federation.users:
            data = user_data(seeded, profile, federation)
            user = sizes[profile.id]
            user["train"].append(len(data.train))
            user["validation"].append(len(data.validation) if data.validation is not None else 0)
            user["test"].append(len(data.test))
    return sizes


def local_runs(roots: Iterable[Path]) -> list[RunResults]:
    """Every complete local run under ``roots`` (any depth)."""
    return [run for run in complete_runs(roots) if run.config.get("algorithm") == "local"]


def round_swing(runs: Iterable[RunResults], last: int) -> dict[str, list[float]]:
    """Each user's relative changes (%) of its primary metric between consecutive rounds,
    over the last ``last`` rounds of each run."""
    swings: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for user_id in run.users:
            values = [run.primary(user_id, r.metrics.get(user_id, {})) for r in run.rounds]
            tail = [v for v in values[-last:] if v is not None]
            for before, after in itertools.pairwise(tail):
                if before:
                    swings[user_id].append(abs(after - before) / before * 100)
    return swings


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}-{max(values)}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run-config", default="", help="run-config overrides (TOML)")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="dirs of local runs")
    parser.add_argument("--last", type=int, default=4, help="rounds at the end to measure")
    parser.add_argument("--output", type=Path, default=Path("noise-floor.json"))
    args = parser.parse_args(argv)
    config = RunConfig.from_run_config(parse_toml_overrides(args.run_config))
    sizes = split_sizes(config, args.seeds)
    runs = local_runs(args.runs)
    swings = round_swing(runs, args.last)
    header = (
        f"{'user':<20} {'train':>9} {'validation':>10} {'test':>9} {'1 test ex. %':>12} "
        f"{'swing mean %':>12} {'swing max %':>11}"
    )
    print(f"seeds {args.seeds}; {len(runs)} local runs, last {args.last} rounds")
    print(header)
    print("-" * len(header))
    rows = {}
    for user_id, user_sizes in sizes.items():
        test = user_sizes["test"]
        swing = swings.get(user_id, [])
        rows[user_id] = {**user_sizes, "swing": swing}
        one = f"{100 / max(test):.1f}-{100 / min(test):.1f}"
        mean = f"{statistics.fmean(swing):.1f}" if swing else "-"
        peak = f"{max(swing):.1f}" if swing else "-"
        print(
            f"{user_id:<20} {_span(user_sizes['train']):>9} "
            f"{_span(user_sizes['validation']):>10} {_span(test):>9} {one:>12} "
            f"{mean:>12} {peak:>11}"
        )
    args.output.write_text(
        json.dumps({"seeds": args.seeds, "last": args.last, "users": rows}, indent=1) + "\n"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
