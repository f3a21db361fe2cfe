r"""Sweep run-config variants over seeds, each against its own local baseline; write a table.

    python -m fedmuscle_flwr.sweep --seeds 0 1 2 --base 'num-server-rounds=20' \\
        --variant 'paper:' --variant 'warm-up 5:warmup-rounds=5' \\
        --grid 'contrastive-weight=0.1,1.0' --jobs 2 --output-dir outputs/sweep/lambda

Every run is an in-process run of the real ServerApp and ClientApp code
(``python -m server_app.inprocess``, one process per run, ``--jobs`` at a time), much
cheaper than a ``flwr run`` launch on a small machine; the final tables of
docs/results.md still come from :mod:`fedmuscle_flwr.compare`. A variant is a name and
run-config overrides on top of ``--base``; ``--grid KEY=V1,V2`` adds the cross product of
its values as variants. Each variant is compared with ``algorithm = "local"`` under the
same overrides, minus the keys that only matter to collaboration, so local baselines are
shared between variants that differ only in those. Runs are keyed by their overrides and
reused when complete, so an interrupted sweep resumes where it stopped. The table goes to
``table.md`` and ``table.json`` (the latest sweep into the directory) and to
``tables/<key>.md`` and ``.json``, keyed by the seeds, base and variants, so a later sweep
into the same directory (sharing its runs) does not overwrite an earlier one's table.

One key is the sweep's, not the run config's: ``attack="USER:KIND"`` makes user USER lie
with one of :data:`client_app.attacks.ATTACKS` in the collaborative run (its local
baseline has no exchange, so none); Delta and the per-user columns then count the honest
users only.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedmuscle_flwr.config import COLLABORATION_KEYS, RunConfig
from fedmuscle_flwr.delta import delta_table, relative_changes
from fedmuscle_flwr.launch import parse_toml_overrides, toml_overrides
from fedmuscle_flwr.results import RunResults, finished_run, write_json_atomic

__all__ = [
    "Variant",
    "local_overrides",
    "parse_variants",
    "run_sweep",
    "sweep_key",
    "sweep_table",
]


@dataclass(frozen=True)
class Variant:
    """One row of a sweep: a name and run-config overrides."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _parse_overrides(text: str) -> dict[str, Any]:
    try:
        return parse_toml_overrides(text)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err


def parse_variants(variants: Sequence[str], grids: Sequence[str]) -> list[Variant]:
    """``NAME:OVERRIDES`` strings, then the cross product of ``KEY=V1,V2,...`` grids."""
    parsed = []
    for text in variants:
        name, sep, overrides = text.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"error: a variant is 'NAME:key=value ...', got {text!r}")
        parsed.append(Variant(name.strip(), _parse_overrides(overrides)))
    axes = []
    for text in grids:
        key, sep, values = text.partition("=")
        if not sep or not values:
            raise SystemExit(f"error: a grid is 'KEY=V1,V2,...', got {text!r}")
        axes.append([(key.strip(), tomllib.loads(f"v={v}")["v"]) for v in values.split(",")])
    for combination in itertools.product(*axes) if axes else ():
        name = " ".join(f"{k}={v}" for k, v in combination)
        parsed.append(Variant(name, dict(combination)))
    if not parsed:
        raise SystemExit("error: give at least one --variant or --grid")
    return parsed


#: The sweep's own key: "USER:KIND", a lying user in the collaborative run.
ATTACK_KEY = "attack"


def local_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The local baseline of ``overrides``: algorithm local, collaboration-only keys dropped."""
    dropped = COLLABORATION_KEYS | {ATTACK_KEY}
    kept = {k: v for k, v in overrides.items() if k not in dropped}
    return kept | {"algorithm": "local"}


def parse_attack(value: Any) -> tuple[str, str]:
    """``"USER:KIND"`` -> (user, kind), with KIND one of the known attacks."""
    from fedmuscle_flwr.attacks import ATTACKS

    user, sep, kind = str(value).partition(":")
    if not sep or not user or kind not in ATTACKS:
        raise SystemExit(
            f"error: attack must be 'USER:KIND' with KIND one of {sorted(ATTACKS)}, got {value!r}"
        )
    return user, kind


def _run_config(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if k != ATTACK_KEY}


def _honest(results: RunResults, liar: str | None) -> RunResults:
    """``results`` without the liar's metrics (so it drops out of Delta and the columns)."""
    if liar is None:
        return results
    rounds = [
        replace(r, metrics={u: m for u, m in r.metrics.items() if u != liar})
        for r in results.rounds
    ]
    return replace(results, rounds=rounds)


def _run_key(overrides: Mapping[str, Any]) -> str:
    text = json.dumps(dict(sorted(overrides.items())), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_one(overrides: dict[str, Any], directory: Path, threads: int) -> RunResults:
    """One in-process run in its own process; its log goes to ``directory/log.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "overrides.json").write_text(json.dumps(overrides, indent=1, sort_keys=True))
    run_config = _run_config(overrides) | {"output-dir": str(directory)}
    command = [  # trainers kept between rounds: the same results as restoring them, faster
        sys.executable, "-m", "server_app.inprocess", "--threads", str(threads),
        "--keep-trainers", "--run-config", toml_overrides(run_config),
    ]  # fmt: skip
    if ATTACK_KEY in overrides:
        command += ["--attack", str(overrides[ATTACK_KEY])]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "FLWR_TELEMETRY_ENABLED": "0"}
    with open(directory / "log.txt", "wb") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    results = finished_run(directory)
    if code != 0 or results is None:
        tail = (directory / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"run {directory} failed (exit {code}): {' | '.join(tail)}")
    return results


def run_sweep(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    *,
    base: Mapping[str, Any],
    output_dir: Path,
    jobs: int = 1,
    threads: int = 1,
) -> dict[str, dict[int, tuple[RunResults, RunResults]]]:
    """Run every variant and its local baseline for every seed (shared and reused runs).

    Returns ``{variant name: {seed: (variant results, local results)}}``.
    """
    plan: dict[str, dict[str, Any]] = {}  # run key -> overrides
    cells: dict[tuple[str, int], tuple[str, str]] = {}
    for variant in variants:
        for seed in seeds:
            ours = dict(base) | variant.overrides | {"seed": seed}
            local = local_overrides(ours)
            for overrides in (ours, local):  # a bad value stops the sweep before any run
                RunConfig.from_run_config(_run_config(overrides))
            if ATTACK_KEY in ours:
                parse_attack(ours[ATTACK_KEY])
            plan[_run_key(ours)] = ours
            plan[_run_key(local)] = local
            cells[(variant.name, seed)] = (_run_key(ours), _run_key(local))
    runs: dict[str, RunResults] = {}
    todo = []
    for key in plan:
        done = finished_run(output_dir / key)
        if done is not None:
            runs[key] = done
        else:
            todo.append(key)
    print(f"sweep: {len(plan)} runs, {len(runs)} reused, {len(todo)} to run, {jobs} at a time")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_one, plan[key], output_dir / key, threads): key for key in todo}
        failed: dict[str, str] = {}
        for count, future in enumerate(as_completed(futures), start=1):
            key = futures[future]
            try:
                runs[key] = future.result()
            except RuntimeError as err:  # one bad run never stops the others
                failed[key] = str(err)
            elapsed = time.perf_counter() - start
            eta = elapsed / count * (len(todo) - count)
            status = "FAILED" if key in failed else "done"
            print(
                f"  [{count}/{len(todo)}] {status} {key} {toml_overrides(plan[key])}"
                f" ({elapsed:.0f} s, about {eta:.0f} s left)",
                flush=True,
            )
    if failed:
        details = "\n".join(f"  {key}: {reason}" for key, reason in failed.items())
        raise SystemExit(
            f"error: {len(failed)} of {len(todo)} runs failed (their logs are in "
            f"{output_dir}/<run>/log.txt); the others are kept and reused on the next "
            f"call:\n{details}"
        )
    return {
        variant.name: {
            seed: (runs[cells[(variant.name, seed)][0]], runs[cells[(variant.name, seed)][1]])
            for seed in seeds
        }
        for variant in variants
    }


def _mean_std(values: Sequence[float]) -> str:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return "n/a"
    std = statistics.stdev(known) if len(known) > 1 else 0.0
    text = f"{statistics.fmean(known):+.2f} ± {std:.2f}"
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)} seeds)"


def _mean_metric(results: RunResults) -> float:
    values = [results.primary(u, m) for u, m in results.final.items()]
    return statistics.fmean(v for v in values if v is not None)


def sweep_table(
    variants: Sequence[Variant],
    outcome: Mapping[str, Mapping[int, tuple[RunResults, RunResults]]],
    *,
    base: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Markdown table (one row per variant) and the raw numbers behind it."""
    lines = [
        "| variant | overrides | Delta vs local (%) | worst user (%) | users improved "
        "| joined models' Delta (%) | mean metric | local mean metric |",
        "|---|---|---|---|---|---|---|---|",
    ]
    raw: dict[str, Any] = {"base": dict(base), "variants": {}}
    for variant in variants:
        per_seed = outcome[variant.name]
        rows: dict[str, list[float]] = {
            k: [] for k in ("delta", "worst", "improved", "joined", "metric", "local")
        }
        per_user: dict[str, list[float]] = {}
        attack = {**base, **variant.overrides}.get(ATTACK_KEY)
        liar = parse_attack(attack)[0] if attack is not None else None
        for ours, local in per_seed.values():
            ours, local = _honest(ours, liar), _honest(local, liar)
            row = delta_table(local, {variant.name: ours})[variant.name]
            for key in ("delta", "worst", "improved"):
                rows[key].append(row[key])
            rows["joined"].append(row["joined"])
            rows["metric"].append(_mean_metric(ours))
            rows["local"].append(_mean_metric(local))
            for user_id, change in relative_changes(local, ours).items():
                per_user.setdefault(user_id, []).append(change)
        raw["variants"][variant.name] = {
            "overrides": variant.overrides,
            "seeds": sorted(per_seed),
            **rows,
            "per_user": per_user,
        }
        improved = rows["improved"]
        lines.append(
            f"| {variant.name} | `{toml_overrides(variant.overrides) or '-'}` "
            f"| {_mean_std(rows['delta'])} | {_mean_std(rows['worst'])} "
            f"| {statistics.fmean(improved):.2f} | {_mean_std(rows['joined'])} "
            f"| {statistics.fmean(rows['metric']):.3f} "
            f"| {statistics.fmean(rows['local']):.3f} |"
        )
    return "\n".join(lines), raw


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m fedmuscle_flwr.sweep", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base", default="", help="overrides every run shares (TOML)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:OVERRIDES")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/sweep"))
    args = parser.parse_args(argv)
    base = _parse_overrides(args.base)
    variants = parse_variants(args.variant, args.grid)
    outcome = run_sweep(
        variants, args.seeds, base=base, output_dir=args.output_dir, jobs=args.jobs,
        threads=args.threads,
    )  # fmt: skip
    table, raw = sweep_table(variants, outcome, base=base)
    command = "python -m fedmuscle_flwr.sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = (
        f"Seeds {list(args.seeds)}; base `{toml_overrides(base) or '-'}`\n`{command}`\n\n{table}\n"
    )
    print(text)
    kept = args.output_dir / "tables" / sweep_key(variants, args.seeds, base)
    kept.parent.mkdir(parents=True, exist_ok=True)
    for stem in (args.output_dir / "table", kept):
        stem.with_suffix(".md").write_text(text)
        write_json_atomic(stem.with_suffix(".json"), raw | {"command": command})
    print(f"wrote {args.output_dir / 'table.md'} and {kept.with_suffix('.md')}")
    return 0


def sweep_key(variants: Sequence[Variant], seeds: Sequence[int], base: dict[str, Any]) -> str:
    """A short key of what a sweep compares (its seeds, base and named variants)."""
    what = {
        "seeds": list(seeds),
        "base": toml_overrides(base),
        "variants": [[v.name, toml_overrides(v.overrides)] for v in variants],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


if __name__ == "__main__":
    raise SystemExit(main())
