"""Compare local, pairwise, ensemble and muscle on one federation and seeds, paper-style.

    python -m fedmuscle_flwr.compare --dataset world --seeds 0 1 2
    python -m fedmuscle_flwr.compare --dataset real --seeds 0 1 2 --rounds 10

Each (algorithm, seed) is a real ``flwr run`` simulation. The table gives every user's
primary metric (mean +- std over seeds), and per algorithm: Delta against local (the mean
relative change over users, ALGORITHM.md), the worst user's relative change and the share
of users that improved, each as mean +- std over seeds. It is written into a section of
``docs/results.md`` (other sections are kept) and the raw numbers beside it as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from fedmuscle_flwr.config import ALGORITHMS
from fedmuscle_flwr.launch import exit_on_sigterm
from fedmuscle_flwr.results import (
    RunResults,
    delta_table,
    write_json_atomic,
    write_markdown_section,
)
from fedmuscle_flwr.simulate import simulate

__all__ = ["compare", "load_runs", "main", "render_table", "summarise"]


def compare(
    overrides: dict[str, Any], seeds: list[int], *, output_dir: Path
) -> dict[int, dict[str, RunResults]]:
    """Run every algorithm for every seed; ``{seed: {algorithm: results}}``.

    Runs already finished under ``output_dir`` (an interrupted comparison) are read back,
    not run again.
    """
    runs: dict[int, dict[str, RunResults]] = {}
    for seed in seeds:
        for algorithm in ALGORITHMS:
            finished = _finished_run(output_dir / f"seed{seed}-{algorithm}")
            if finished is not None:
                print(f"== seed {seed}, {algorithm}: finished before, reused")
                runs.setdefault(seed, {})[algorithm] = finished
                continue
            start = time.perf_counter()
            print(f"== seed {seed}, {algorithm}", flush=True)
            runs.setdefault(seed, {})[algorithm] = simulate(
                overrides | {"algorithm": algorithm, "seed": seed},
                output_dir=output_dir / f"seed{seed}-{algorithm}",
                quiet=True,
            )
            print(f"   done in {time.perf_counter() - start:.0f} s", flush=True)
    return runs


def _finished_run(directory: Path) -> RunResults | None:
    """The newest complete run under ``directory`` (``run-*/results.json``), if any."""
    for path in sorted(directory.glob("run-*/results.json"), key=lambda p: p.stat().st_mtime)[::-1]:
        results = RunResults.from_dict(json.loads(path.read_text()))
        if results.complete:
            return results
    return None


def load_runs(directory: Path) -> dict[int, dict[str, RunResults]]:
    """Read back the complete runs of a comparison (``seed<S>-<algorithm>/run-*/``).

    Seeds with an algorithm missing are left out, so an interrupted comparison can still be
    summarised over the seeds it completed.
    """
    runs: dict[int, dict[str, RunResults]] = {}
    for cell in sorted(directory.glob("seed*-*")):
        seed_text, algorithm = cell.name.removeprefix("seed").split("-", 1)
        finished = _finished_run(cell)
        if finished is not None:
            runs.setdefault(int(seed_text), {})[algorithm] = finished
    return {seed: by for seed, by in runs.items() if set(by) == set(ALGORITHMS)}


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def summarise(runs: dict[int, dict[str, RunResults]]) -> dict[str, Any]:
    """Per-user metrics and Delta/worst/improved per algorithm, lists over seeds."""
    users: dict[str, dict[str, list[float]]] = {}
    deltas: dict[str, dict[str, list[float]]] = {}
    info = {}
    for by_algorithm in runs.values():
        local = by_algorithm["local"]
        for algorithm, results in by_algorithm.items():
            for user_id, metrics in results.final.items():
                value = results.primary(user_id, metrics)
                if value is not None:
                    users.setdefault(user_id, {}).setdefault(algorithm, []).append(value)
                    info[user_id] = results.users[user_id]
        others = {a: r for a, r in by_algorithm.items() if a != "local"}
        for algorithm, row in delta_table(local, others).items():
            for key, value in row.items():
                deltas.setdefault(algorithm, {}).setdefault(key, []).append(value)
    return {
        "users": users,
        "deltas": deltas,
        "info": {u: vars(i) for u, i in info.items()},
        "seeds": sorted(runs),
    }


def render_table(summary: dict[str, Any], title: str, command: str) -> str:
    """The markdown section for one federation."""
    algorithms = list(ALGORITHMS)
    lines = [
        f"### {title}",
        "",
        f"Seeds {summary['seeds']}; `{command}`; measured {time.strftime('%Y-%m-%d')}.",
        "",
        "| user | model | task | metric | " + " | ".join(algorithms) + " |",
        "|---|---|---|---|" + "---|" * len(algorithms),
    ]
    for user_id in sorted(summary["users"]):
        info = summary["info"][user_id]
        cells = [_mean_std(summary["users"][user_id].get(a, [])) for a in algorithms]
        lines.append(
            f"| {user_id} | {info['model']} | {info['task']} | {info['metric']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "| algorithm | Delta vs local (%) | worst user (%) | users improved |",
        "|---|---|---|---|",
    ]
    for algorithm in algorithms[1:]:
        row = summary["deltas"].get(algorithm, {})
        cells = [_mean_std(row.get(key, [])) for key in ("delta", "worst", "improved")]
        lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m fedmuscle_flwr.compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--dataset", choices=("world", "real"), default="world")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--federation")
    parser.add_argument("--run-config", help="more overrides, TOML: 'tau=0.2 local-steps=5'")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/compare"))
    parser.add_argument("--results-md", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--resume", type=Path, metavar="DIR",
        help="continue an interrupted comparison in its output DIR (finished runs are reused)",
    )  # fmt: skip
    parser.add_argument(
        "--summarise", type=Path, metavar="DIR",
        help="run nothing: summarise the complete seeds of an earlier comparison's output DIR",
    )  # fmt: skip
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"dataset": args.dataset}
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    if args.federation:
        overrides["federation"] = args.federation
    for token in shlex.split(args.run_config or "", posix=False):
        overrides |= tomllib.loads(token)
    if args.summarise is not None:
        runs = load_runs(args.summarise)
        if not runs:
            print(f"error: no seed with all four algorithms under {args.summarise}")
            return 1
    else:
        exit_on_sigterm()
        label = f"{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        runs = compare(overrides, args.seeds, output_dir=args.resume or args.output_dir / label)
    summary = summarise(runs)
    command = "python -m fedmuscle_flwr.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    table = render_table(
        summary,
        f"Federation `{overrides.get('federation', 'default')}`, data `{args.dataset}`",
        command,
    )
    print(table)
    args.results_md.parent.mkdir(parents=True, exist_ok=True)
    write_markdown_section(args.results_md, f"compare:{args.dataset}", table)
    write_json_atomic(args.results_md.with_name(f"results-{args.dataset}.json"), summary)
    print(f"wrote {args.results_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
