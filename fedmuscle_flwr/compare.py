"""Compare local, pairwise, ensemble and muscle on one federation and seeds, paper-style.

    python -m fedmuscle_flwr.compare --dataset world --seeds 0 1 2
    python -m fedmuscle_flwr.compare --dataset real --seeds 0 1 2 --rounds 10
    python -m fedmuscle_flwr.compare --variant 'muscle+relevance:partner-selection="relevance"'

Each (column, seed) is a real ``flwr run`` simulation. Columns are the four built-in
algorithms under the run config's defaults, plus any ``--variant NAME:OVERRIDES`` (e.g. an
option, or a plug-in algorithm). The table gives every user's primary metric (mean +- std
over seeds), and per column: Delta against local (the mean relative change over users,
ALGORITHM.md), the worst user's relative change and the share of users that improved,
each as mean +- std over seeds. It is written into a section of ``docs/results.md``
(other sections are kept), the raw numbers beside it as JSON, and a learning-curve figure
(mean primary metric per round, one line per column, a band over seeds) as PNG.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fedmuscle_flwr.data.sources import get_data_source
from fedmuscle_flwr.delta import delta_table
from fedmuscle_flwr.launch import exit_on_sigterm, parse_toml_overrides
from fedmuscle_flwr.markdown import write_markdown_section
from fedmuscle_flwr.plots import plot_learning_curves
from fedmuscle_flwr.results import RunResults, finished_run, write_json_atomic
from fedmuscle_flwr.simulate import simulate

__all__ = [
    "BUILTIN_COLUMNS",
    "compare",
    "load_runs",
    "main",
    "render_delta_table",
    "render_table",
    "summarise",
]

#: The paper's four algorithms, each under the run config's defaults.
BUILTIN_COLUMNS: dict[str, dict[str, Any]] = {
    name: {"algorithm": name} for name in ("local", "pairwise", "ensemble", "muscle")
}


def compare(
    overrides: dict[str, Any],
    seeds: list[int],
    *,
    output_dir: Path,
    columns: dict[str, dict[str, Any]] | None = None,
) -> dict[int, dict[str, RunResults]]:
    """Run every column for every seed; ``{seed: {column: results}}``.

    ``columns`` maps a name to its run-config overrides (default: :data:`BUILTIN_COLUMNS`;
    one must be ``local``). Runs already finished under ``output_dir`` (an interrupted
    comparison) are read back, not run again.
    """
    columns = columns or BUILTIN_COLUMNS
    if "local" not in columns:
        raise ValueError("a comparison needs a 'local' column, the reference of Delta")
    runs: dict[int, dict[str, RunResults]] = {}
    for seed in seeds:
        for name, column in columns.items():
            finished = finished_run(output_dir / f"seed{seed}-{name}")
            if finished is not None:
                print(f"== seed {seed}, {name}: finished before, reused")
                runs.setdefault(seed, {})[name] = finished
                continue
            start = time.perf_counter()
            print(f"== seed {seed}, {name}", flush=True)
            runs.setdefault(seed, {})[name] = simulate(
                overrides | column | {"seed": seed},
                output_dir=output_dir / f"seed{seed}-{name}",
                quiet=True,
            )
            print(f"   done in {time.perf_counter() - start:.0f} s", flush=True)
    return runs


def load_runs(directory: Path) -> dict[int, dict[str, RunResults]]:
    """Read back the complete runs of a comparison (``seed<S>-<column>/run-*/``).

    Seeds with a column missing (one the other seeds have) are left out, so an interrupted
    comparison can still be summarised over the seeds it completed.
    """
    runs: dict[int, dict[str, RunResults]] = {}
    for cell in sorted(directory.glob("seed*-*")):
        seed_text, name = cell.name.removeprefix("seed").split("-", 1)
        finished = finished_run(cell)
        if finished is not None:
            runs.setdefault(int(seed_text), {})[name] = finished
    names = set().union(*(set(by) for by in runs.values())) if runs else set()
    return {seed: by for seed, by in runs.items() if set(by) == names and "local" in by}


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
    first = next(iter(runs.values()), {})
    return {
        "columns": ["local", *(name for name in first if name != "local")],
        "users": users,
        "deltas": deltas,
        "info": {u: vars(i) for u, i in info.items()},
        "seeds": sorted(runs),
    }


def render_table(summary: dict[str, Any], title: str, command: str) -> str:
    """The markdown section for one federation."""
    algorithms = summary["columns"]
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
    return "\n".join([*lines, "", render_delta_table(summary)])


def render_delta_table(summary: dict[str, Any]) -> str:
    """Delta vs local, worst user, share improved, joined models' Delta (mean +- std over seeds).

    The joined models' Delta is what collaboration did to each user's joined model, also
    where the fallback reported the lone one (n/a for runs from before that was recorded).
    """
    lines = [
        "| algorithm | Delta vs local (%) | worst user (%) | users improved "
        "| joined models' Delta (%) |",
        "|---|---|---|---|---|",
    ]
    for name in summary["columns"][1:]:
        row = summary["deltas"].get(name, {})
        keys = ("delta", "worst", "improved", "joined")
        cells = [_mean_std(row.get(key, [])) for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m fedmuscle_flwr.compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--dataset", default="world", help="a data source: world, real, hub or a plug-in's"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--federation")
    parser.add_argument("--run-config", help="more overrides, TOML: 'tau=0.2 local-steps=5'")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME:OVERRIDES",
        help="an extra column: a name ([A-Za-z0-9+._-]) and run-config overrides",
    )  # fmt: skip
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
    try:
        get_data_source(args.dataset)
    except KeyError as err:
        parser.error(str(err))
    overrides: dict[str, Any] = {"dataset": args.dataset}
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    if args.federation:
        overrides["federation"] = args.federation
    overrides |= parse_toml_overrides(args.run_config or "")
    columns = dict(BUILTIN_COLUMNS)
    for text in args.variant:
        name, sep, values = text.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9+._-]+", name) or name in columns:
            parser.error(f"--variant needs a new NAME of [A-Za-z0-9+._-] then ':', got {text!r}")
        columns[name] = parse_toml_overrides(values)
    if args.summarise is not None:
        runs = load_runs(args.summarise)
        if not runs:
            print(f"error: no seed with every column under {args.summarise}")
            return 1
    else:
        exit_on_sigterm()
        label = f"{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        runs = compare(
            overrides, args.seeds, output_dir=args.resume or args.output_dir / label,
            columns=columns,
        )  # fmt: skip
    failed = [
        f"seed {seed} {name}: {results.reason}"
        for seed, by in sorted(runs.items())
        for name, results in sorted(by.items())
        if results.status == "failed"
    ]
    if failed:
        print("error: runs failed, so the comparison is not written:\n  " + "\n  ".join(failed))
        return 1
    summary = summarise(runs)
    figure = args.results_md.parent / "figures" / f"curves-{args.dataset}.png"
    plot_learning_curves(runs, figure)
    command = "python -m fedmuscle_flwr.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    table = render_table(
        summary,
        f"Federation `{overrides.get('federation', 'default')}`, data `{args.dataset}`",
        command,
    )
    table += (
        f"\n\n![mean primary metric per round]({figure.relative_to(args.results_md.parent)})"
        "\n\n*Mean primary metric over users per round; line: mean over seeds, band: min to"
        " max over seeds.*"
    )
    print(table)
    print(render_delta_table(summary))
    args.results_md.parent.mkdir(parents=True, exist_ok=True)
    write_markdown_section(args.results_md, f"compare:{args.dataset}", table)
    write_json_atomic(args.results_md.with_name(f"results-{args.dataset}.json"), summary)
    print(f"wrote {args.results_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
