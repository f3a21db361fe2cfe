"""Round time of a real deployment (SuperLink + SuperNodes over gRPC/TLS) against a simulation.

    python benchmarks/deploy_round.py                 # all modes, writes docs/benchmarks.md
    python benchmarks/deploy_round.py --rounds 3 --modes sim warm-fast

The same federation (tests/fixtures/federation_tiny.toml, 4 users: CNN, ViT+LoRA,
SegFormer, BERT) and run config run once as a ``flwr run`` local simulation and once per
deployment mode through ``deploy/local-demo.sh`` (1 SuperLink, 1 SuperNode process per user,
TLS, SuperNode authentication, loopback). A round's time is the ServerApp's wall time from
building the instructions to the last reply (results.json ``rounds[].seconds``); round 1
builds models and data everywhere, so the steady round is the median of rounds 2 on.

Deployment modes, each adding one cut to the previous:

- ``flower``: Flower's defaults: ServerApp polls every 3 s (as HttpGrid), SuperNode idle poll
  3 s, SuperExec poll 1 s, a new ``flwr-clientapp`` process per message.
- ``grid``: the ServerApp polls every 0.2 s (run config ``grid-poll-interval``).
- ``warm``: + one warm ClientApp process per SuperNode (``--isolation process`` and
  ``deploy/warm_clientapp.py``): no process start, imports or model rebuild per message.
- ``warm-fast``: + the SuperNode's idle poll capped at 0.2 s (``deploy/supernode_fast_poll.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flwr
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmuscle_flwr.launch import run_simulation, toml_overrides  # noqa: E402
from fedmuscle_flwr.markdown import write_markdown_section  # noqa: E402

TINY = str(ROOT / "tests" / "fixtures" / "federation_tiny.toml")
USERS = 4
DOC_TITLE = "# Benchmarks\n\nEvery number here was measured by the script named with it.\n"

# The same run config for every mode (the demo adds output-dir; state-dir is per node there).
BASE = {
    "federation": TINY,
    "public-size": 64,
    "public-batch-size": 8,
    "embed-dim": 16,
    "num-partners": 2,
    "local-steps": 2,
    "batch-size": 8,
    "min-nodes": USERS,
    "quorum": 2,
    "node-wait-timeout": 120.0,
    "round-timeout": 300.0,
}

MODES: dict[str, dict[str, Any]] = {
    "flower": {"run_config": {"grid-poll-interval": 3.0}, "flags": ["--cold"]},
    "grid": {"run_config": {"grid-poll-interval": 0.2}, "flags": ["--cold"]},
    "warm": {"run_config": {"grid-poll-interval": 0.2}, "flags": ["--warm"]},
    "warm-fast": {
        "run_config": {"grid-poll-interval": 0.2},
        "flags": ["--warm", "--fast-poll", "0.2"],
    },
}
LABELS = {
    "sim": "simulation (`flwr run`, Ray, 4 simulated SuperNodes)",
    "flower": "deployed, Flower defaults (3 s ServerApp poll, 3 s SuperNode poll, process/message)",
    "grid": "deployed, + ServerApp poll 0.2 s (`grid-poll-interval`)",
    "warm": "deployed, + warm ClientApp process (`--warm`)",
    "warm-fast": "deployed, + SuperNode idle poll 0.2 s (`--fast-poll 0.2`)",
}


def summarise(results: dict[str, Any], wall: float) -> dict[str, Any]:
    """Round times and client handler times from one results.json."""
    rounds = results["rounds"]
    seconds = [r["seconds"] for r in rounds]
    steady = seconds[1:] or seconds
    handler = [
        statistics.mean(m.get("client-seconds", 0.0) for m in r["metrics"].values())
        for r in rounds[1:]
        if r["metrics"]
    ]
    failed = sum(len(r["failed"]) for r in rounds)
    return {
        "first": seconds[0],
        "steady": statistics.median(steady),
        "handler": statistics.mean(handler) if handler else float("nan"),
        "wall": wall,
        "failed": failed,
        "rounds": seconds,
    }


def run_sim(rounds: int, work: Path) -> dict[str, Any]:
    """One local simulation of the tiny federation."""
    config = BASE | {"num-server-rounds": rounds, "state-dir": str(work / "sim-state")}
    start = time.perf_counter()
    path = run_simulation(config, num_supernodes=USERS, output_dir=work / "sim-out", quiet=True)
    return summarise(json.loads(path.read_text()), time.perf_counter() - start)


def run_deployed(mode: str, rounds: int, work: Path) -> dict[str, Any]:
    """One deployment through deploy/local-demo.sh."""
    spec = MODES[mode]
    workdir = work / f"deploy-{mode}"
    overrides = {k: v for k, v in BASE.items() if k != "federation"} | spec["run_config"]
    cmd = [
        "bash", str(ROOT / "deploy" / "local-demo.sh"),
        "--workdir", str(workdir), "--rounds", str(rounds),
        "--run-config", toml_overrides(overrides), *spec["flags"],
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"local-demo.sh ({mode}) failed:\n{done.stderr[-4000:]}")
    path = sorted((workdir / "out").glob("run-*/results.json"))[-1]
    return summarise(json.loads(path.read_text()), wall)


def import_seconds() -> float:
    """What a new ClientApp process pays before it runs: Python + Flower + torch + the app."""
    code = "import client_app.app"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - start


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The markdown table."""
    sim = rows.get("sim", {}).get("steady")
    lines = [
        "| mode | round 1 (cold) | steady round (median, rounds 2+) | vs simulation "
        "| mean client handler | `flwr run` wall incl. start-up | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in rows.items():
        ratio = f"{r['steady'] / sim:.1f}x" if sim else ""
        lines.append(
            f"| {LABELS[mode]} | {r['first']:.1f} s | {r['steady']:.1f} s | {ratio} "
            f"| {r['handler']:.2f} s | {r['wall']:.0f} s | {r['failed']} |"
        )
    return "\n".join(lines)


def breakdown(rows: dict[str, dict[str, Any]]) -> str:
    """Where the steady-round difference goes: each cut's saving, measured as a difference."""
    steps = [
        ("flower", "grid", "ServerApp poll 3 s -> 0.2 s (`grid-poll-interval`)"),
        ("grid", "warm", "new `flwr-clientapp` process per message -> warm process (`--warm`)"),
        ("warm", "warm-fast", "SuperNode idle poll 3 s -> 0.2 s (`--fast-poll`)"),
    ]
    lines = [
        "| step | steady round before -> after | saved | of which in the client handler |",
        "|---|---|---|---|",
    ]
    for before, after, label in steps:
        if before in rows and after in rows:
            a, b = rows[before], rows[after]
            lines.append(
                f"| {label} | {a['steady']:.1f} s -> {b['steady']:.1f} s "
                f"| {a['steady'] - b['steady']:.1f} s | {a['handler'] - b['handler']:.1f} s |"
            )
    last = next((m for m in ("warm-fast", "warm", "grid", "flower") if m in rows), None)
    if "sim" in rows and last is not None:
        a, b = rows[last], rows["sim"]
        lines.append(
            f"| left vs simulation ({last}): polls, TLS/gRPC transfer, SuperNode and Runtime "
            f"API hops | {a['steady']:.1f} s vs {b['steady']:.1f} s "
            f"| {a['steady'] - b['steady']:.1f} s | {a['handler'] - b['handler']:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--modes", nargs="+", default=["sim", *MODES], choices=["sim", *MODES], metavar="MODE"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--notes", default="", help="a paragraph appended under the table")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is the cold round)")

    rows: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fedmuscle-deploy-bench-") as tmp:
        work = Path(tmp)
        for mode in args.modes:
            print(f"running {mode} ...", flush=True)
            rows[mode] = (
                run_sim(args.rounds, work)
                if mode == "sim"
                else run_deployed(mode, args.rounds, work)
            )
            print(f"  {mode}: rounds {[round(s, 1) for s in rows[mode]['rounds']]}", flush=True)
    load_after = os.getloadavg()[0]
    imports = import_seconds()
    body = table(rows) + "\n\nWhere the difference goes (steady rounds):\n\n" + breakdown(rows)
    print(body)
    print(f"new ClientApp process: Python + Flower + torch + app imports {imports:.1f} s")
    if args.no_write:
        return 0
    section = "\n".join(
        [
            "### Deployed vs simulated round time (CPU)",
            "",
            f"Measured {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, "
            f"{torch.get_num_threads()} threads, flwr {flwr.__version__}, torch "
            f"{torch.__version__}, Python {platform.python_version()}, with "
            f"`python benchmarks/deploy_round.py --rounds {args.rounds}`. Federation "
            "`tests/fixtures/federation_tiny.toml` (4 users: CNN image classification, ViT+LoRA "
            "multi-label, SegFormer segmentation, BERT text), the tests' tiny run config "
            "(B=8, d=16, M=2, 2 local steps). Deployed = `deploy/local-demo.sh`: 1 SuperLink "
            "and 4 SuperNode processes on loopback, TLS, SuperNode authentication, gRPC-rere "
            "Fleet API. Round time = ServerApp wall time from instructions to last reply.",
            "",
            body,
            "",
            f"A new ClientApp process first spends {imports:.1f} s importing Python, Flower, "
            "torch and the app (measured alone after the runs). The client handler time is "
            "the ClientApp's own `client-seconds` (building or restoring the trainer, training, "
            "evaluation, Z); with a new process per message it rebuilds the user's model and "
            "data from disk every round. The machine's 1-minute load average was "
            f"{load_before:.1f} before and {load_after:.1f} after the runs (2 cores; other jobs "
            "shared it), so times are noisy, and a mode measured later may be slowed by a rising "
            "load: the client handler column (pure compute) shows how much.",
            *(["", args.notes] if args.notes else []),
        ]
    )
    write_markdown_section(args.out, "deploy:cpu", section, title=DOC_TITLE)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
