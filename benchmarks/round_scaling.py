"""Benchmark: a real ``flwr run`` simulation's round time against the number of users.

For each N it writes a federation of N tiny users (the four groups of the shipped
``hundred`` federation, one per task type, ``count`` scaled to N / 4, and each task's
private set scaled to keep about 80 examples per user), runs ``flwr run`` with N simulated
SuperNodes for ``--rounds`` rounds, and reads results.json: round 1 (every user builds its
data and model), the steady round (median of rounds 2 on), the server's work per round
(``server_ms``: payloads, partners, screening), the users' ``setup-seconds`` (data, model,
restored state) in round 1 and after, and the whole launch's wall time. From
``--sample-from`` users on, ``fraction-train`` is ``--fraction`` (a quarter of the users
train each round). Prints a table and writes it to docs/benchmarks.md.

    python benchmarks/round_scaling.py                      # N = 10, 32, 128, 512
    python benchmarks/round_scaling.py --users 10 32 --rounds 3 --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import flwr
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmuscle_flwr.launch import exit_on_sigterm, run_simulation, toml_overrides  # noqa: E402
from fedmuscle_flwr.markdown import write_markdown_section  # noqa: E402

DOC_TITLE = "# Benchmarks\n\nEvery number here was measured by the script named with it."
GROUPS = ROOT / "fedmuscle_flwr" / "federations" / "hundred.toml"
EXAMPLES_PER_USER = 80  # private examples per user before its train/test split
# Small rounds, so that the table shows the framework's cost per user, not training.
RUN_CONFIG: dict[str, Any] = {
    "public-size": 256,
    "public-batch-size": 16,
    "embed-dim": 32,
    "num-partners": 2,
    "local-steps": 2,
    "contrastive-steps": 1,
    "gate": "off",  # the paired gate runs the supervised steps twice: training, not framework
    "batch-size": 16,
    "min-nodes": 2,
    "quorum": 2,
    "node-wait-timeout": 600.0,
    "round-timeout": 1800.0,
}
FIRST_ROUND_TARGET = 2.0  # issue 10: round 1 within 2x a steady round


def write_federation(users: int, path: Path) -> None:
    """The ``hundred`` federation's four groups with ``users`` users in all."""
    spec = tomllib.loads(GROUPS.read_text())
    groups = spec["users"]
    counts = [users // len(groups) + (k < users % len(groups)) for k in range(len(groups))]
    lines = ["[data]", "image-size = 32", "test-fraction = 0.25", "world-seed = 0"]
    lines.append(f"private-size = {max(counts) * EXAMPLES_PER_USER}")
    for group, count in zip(groups, counts, strict=True):
        table = {k: v for k, v in group.items() if k != "model-config"} | {"count": count}
        lines += ["", "[[users]]", *_toml_lines(table)]
        lines += ["[users.model-config]", *_toml_lines(group["model-config"])]
    path.write_text("\n".join(lines) + "\n")


def _toml_lines(table: dict[str, Any]) -> list[str]:
    """``key = value`` lines of a flat table (JSON literals are TOML literals here)."""
    return [f"{key} = {json.dumps(value)}" for key, value in table.items()]


def measure(users: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One launch with ``users`` simulated SuperNodes; its timings from results.json."""
    federation = work / f"federation-{users}.toml"
    write_federation(users, federation)
    fraction = args.fraction if users >= args.sample_from else 1.0
    run_config = RUN_CONFIG | {
        "num-server-rounds": args.rounds,
        "federation": str(federation),
        "fraction-train": fraction,
        "state-dir": str(work / f"state-{users}"),
    }
    start = time.perf_counter()
    path = run_simulation(
        run_config, num_supernodes=users, output_dir=work / f"out-{users}",
        flwr_home=work / f"home-{users}", timeout=args.timeout, quiet=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    results = json.loads(path.read_text())
    rounds = results["rounds"]
    setup = [[m["setup-seconds"] for m in r["metrics"].values()] for r in rounds]
    return {
        "users": users,
        "fraction": fraction,
        "status": results["status"],
        "replied": [len(r["replied"]) for r in rounds],
        "failed": sum(len(r["failed"]) for r in rounds),
        "first": rounds[0]["seconds"],
        "steady": statistics.median(r["seconds"] for r in rounds[1:]),
        "server_ms": statistics.median(r["server_ms"] for r in rounds),
        "setup_first": statistics.mean(setup[0]),
        "setup_steady": statistics.mean(s for r in setup[1:] for s in r),
        "wall": wall,
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of the measured launches."""
    lines = [
        "| users N | fraction-train | trained per round | round 1 | steady round "
        "| round 1 / steady | server per round | setup per user, round 1 | setup per user, "
        "later | `flwr run` wall | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        replied = "/".join(str(n) for n in r["replied"])
        lines.append(
            f"| {r['users']} | {r['fraction']:g} | {replied} | {r['first']:.1f} s "
            f"| {r['steady']:.1f} s | {r['first'] / r['steady']:.1f}x | {r['server_ms']:.0f} ms "
            f"| {r['setup_first']:.2f} s | {r['setup_steady']:.2f} s | {r['wall']:.0f} s "
            f"| {r['status']}, {r['failed']} failed |"
        )
    return lines


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[10, 32, 128, 512])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--sample-from", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    exit_on_sigterm()  # a stopped benchmark still stops its SuperLink and simulation
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedmuscle-round-scaling-") as tmp:
        for users in args.users:
            print(f"==> {users} users ...", flush=True)
            row = measure(users, args, Path(tmp))
            rows.append(row)
            print("\n".join(table([row])[2:]), flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        "### Round time against the number of users (`flwr run` simulation, CPU)",
        "",
        f"Measured {dt.date.today()}, {platform.machine()} CPU ({os.cpu_count()} cores), "
        f"flwr {flwr.__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, with `python benchmarks/round_scaling.py --users "
        f"{' '.join(map(str, args.users))} --rounds {args.rounds}`. Federation: the four "
        "groups of `fedmuscle_flwr/federations/hundred.toml` (CNN image classification, CNN "
        "multi-label, SegFormer segmentation, BERT text; tiny models), N / 4 users each, "
        f"about {EXAMPLES_PER_USER} private examples per user; run config: the defaults with "
        f"`{toml_overrides({k: v for k, v in RUN_CONFIG.items() if 'timeout' not in k})}`. "
        "Round time = the ServerApp's wall time from instructions to the last reply; "
        "server per round = the strategy's own work (median); setup = the ClientApp's "
        "`setup-seconds` (data, model, restored state; mean over users). Load average "
        f"(1 min) {load_before:.1f} before and {load_after:.1f} after.",
        "",
        *table(rows),
        "",
    ]
    for r in rows:
        ratio = r["first"] / r["steady"]
        met = "met" if ratio <= FIRST_ROUND_TARGET else "not met"
        lines.append(
            f"- {r['users']} users: round 1 is {ratio:.1f}x a steady round "
            f"(target <= {FIRST_ROUND_TARGET:g}x): {met}"
        )
    largest = rows[-1]
    lines.append(
        f"- {largest['users']} users x {args.rounds} rounds with fraction-train "
        f"{largest['fraction']:g}: {largest['status']}"
    )
    section = "\n".join(lines)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    write_markdown_section(args.out, "round_scaling:cpu", section, title=DOC_TITLE)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
