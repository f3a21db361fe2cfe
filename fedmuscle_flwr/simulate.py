"""The main job: one FedMuscle run as a real ``flwr run`` local simulation.

    python -m fedmuscle_flwr.simulate                       # default federation, world data
    python -m fedmuscle_flwr.simulate --dataset real --rounds 5
    python -m fedmuscle_flwr.simulate --run-config 'algorithm="pairwise" tau=0.2'
    python -m fedmuscle_flwr.simulate --resume outputs/20261201-120000/run-1   # continue it

One simulated SuperNode per user of the federation; progress is printed every round;
results (results.json, metrics.png, bytes.png) go to ``<output-dir>/<label>/run-<id>/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fedmuscle_flwr.algorithms import list_algorithms
from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.launch import (
    LaunchError,
    exit_on_sigterm,
    parse_toml_overrides,
    run_simulation,
)
from fedmuscle_flwr.preflight import check_run
from fedmuscle_flwr.results import RunResults

__all__ = ["main", "simulate"]


def simulate(
    overrides: dict[str, Any], *, output_dir: Path, quiet: bool = False, timeout: float = 3600.0
) -> RunResults:
    """Run one simulation with ``overrides`` on top of pyproject's run config."""
    config = RunConfig.from_run_config(overrides)  # validates before anything starts
    users = check_run(config).users  # every user's model type, task and config
    path = run_simulation(
        overrides, num_supernodes=len(users), output_dir=output_dir, quiet=quiet, timeout=timeout
    )
    return RunResults.from_dict(json.loads(path.read_text()))


def resume_overrides(directory: Path) -> dict[str, Any]:
    """The configuration of the stopped run in ``directory``, to continue it."""
    path = directory / "results.json"
    if not path.is_file():
        raise LaunchError(
            f"--resume: no results.json in {directory}; give the run's results directory "
            "(outputs/<label>/run-<id>/)"
        )
    config = dict(json.loads(path.read_text())["config"])
    config.pop("output-dir", None)
    return config | {"resume-from": str(directory.resolve())}


def parse_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line options -> run-config overrides."""
    overrides: dict[str, Any] = {}
    if args.run_config:
        overrides |= parse_toml_overrides(args.run_config)
    for key in ("algorithm", "dataset", "seed", "federation"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m fedmuscle_flwr.simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--algorithm", choices=list_algorithms())
    parser.add_argument("--dataset", help="a data source: world, real, hub or a plug-in's")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--federation", help="a shipped federation name or a TOML path")
    parser.add_argument("--run-config", help="more overrides, TOML: 'tau=0.2 payload=\"dense\"'")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    parser.add_argument(
        "--resume", type=Path, metavar="DIR",
        help="continue a stopped run at its first unfinished round: its results directory",
    )  # fmt: skip
    args = parser.parse_args(argv)
    exit_on_sigterm()
    label = time.strftime("%Y%m%d-%H%M%S")
    output_dir = args.output_dir / label
    try:
        overrides = parse_overrides(args)
        if args.resume is not None:
            overrides = resume_overrides(args.resume) | overrides
            output_dir = args.resume.parent
        results = simulate(overrides, output_dir=output_dir)
    except (LaunchError, ValueError) as err:
        print(f"error: {err}")
        return 1
    print("\nfinal metrics per user:")
    for user_id, info in sorted(results.users.items()):
        value = results.final.get(user_id, {}).get(info.metric)
        shown = f"{value:.4f}" if value is not None else "n/a"
        print(f"  {user_id:<22} {info.model:<12} {info.task:<28} {info.metric} {shown}")
    print(f"results: {output_dir}")
    if results.status != "complete":
        print(f"error: the run failed: {results.reason}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
