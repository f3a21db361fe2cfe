"""Replay the fallback's decision on recorded runs: users improved against the worst user.

Under ``fallback-criterion = "bootstrap"`` a user reports its joined model when the joined
model won at least ``fallback-confidence`` of the paired validation resamples pooled over
the window (``fallback-joined-share``) and at least ``fallback-last-share`` of this round's
(``fallback-last-share``), and its lone model otherwise. Both shares and the joined model's
test metric (``joined-<metric>``) are in every round of ``results.json``; the lone model
trains exactly as the local baseline does, so its test metric is the local run's. That
makes any other pair of thresholds replayable without training: this prints, for each
round asked and each pair, the users improved, Delta and the worst user over the runs, as
well as two bounds that no threshold can pass: ``joined`` (always the joined model) and
``oracle`` (the joined model exactly where it beats local on the test split).

The replay is exact only where the lone model and the local run agree: every user-round
that reported its lone model is checked against the local run, and the mismatches are
counted in the output (in-process sweeps agree bit for bit). Runs that differ in more than
the seed (another algorithm, other overrides) are replayed as separate groups, each named
by the run-config keys that set it apart.

Usage:
    python benchmarks/fallback_frontier.py --runs outputs/sweep [--rounds 20 30] \\
        [--confidence 0.5 0.8] [--last-share 0 0.5] [--output fallback-frontier.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmuscle_flwr.config import COLLABORATION_KEYS
from fedmuscle_flwr.results import RunResults, complete_runs

#: Run-config keys that do not change what a run trains (where it writes, how it resumes).
BOOKKEEPING_KEYS = frozenset({"algorithm", "output-dir", "state-dir", "resume-from"})
CONFIDENCES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
LAST_SHARES = (0.0, 0.5)


@dataclass(frozen=True)
class Pair:
    """A collaborative run and the local run it is measured against."""

    run: RunResults
    local: RunResults

    @property
    def seed(self) -> int:
        return int(self.run.config.get("seed", 0))


@dataclass(frozen=True)
class Outcome:
    """One rule on the runs at one round: means over runs of a run's users."""

    improved: float  # share of users with m > m_local
    delta: float  # mean relative change, %
    worst: float  # mean over runs of the run's worst user, %
    lowest: float  # the worst user of all runs, %


def _trained_alike(run: RunResults, local: RunResults) -> bool:
    """Whether ``local`` is ``run``'s local baseline: equal on every key that is neither
    collaboration-only nor bookkeeping."""
    ignored = COLLABORATION_KEYS | BOOKKEEPING_KEYS
    keys = (set(run.config) | set(local.config)) - ignored
    return all(run.config.get(k) == local.config.get(k) for k in keys)


def pair_runs(runs: Sequence[RunResults]) -> list[Pair]:
    """Each collaborative run that recorded fallback shares, with its local baseline.

    A run whose baseline is missing is left out with a note on stdout.
    """
    locals_ = [r for r in runs if r.config.get("algorithm") == "local"]
    pairs = []
    for run in runs:
        if run.config.get("algorithm") == "local" or not _has_shares(run):
            continue
        match = next((loc for loc in locals_ if _trained_alike(run, loc)), None)
        if match is None:
            print(
                f"note: no local baseline for {run.config.get('algorithm')} seed "
                f"{run.config.get('seed')}: left out"
            )
            continue
        pairs.append(Pair(run, match))
    return pairs


def _has_shares(run: RunResults) -> bool:
    return any("fallback-joined-share" in m for r in run.rounds for m in r.metrics.values())


@dataclass(frozen=True)
class UserRound:
    """What the replay needs of one user in one round."""

    joined: float  # the joined model's test metric
    local: float  # the local run's (= the lone model's) test metric
    share: float  # fallback-joined-share
    last_share: float  # fallback-last-share (the pooled share where the window is one round)
    reported: float  # what the run reported
    kept_lone: bool  # the run's own decision


def user_rounds(pair: Pair, round_number: int) -> dict[str, UserRound]:
    """Every user of ``pair`` in round ``round_number`` (1-based) with all it needs; users
    without fallback shares or with a local metric of 0 are left out, as Delta leaves them."""
    run, local = pair.run, pair.local
    record = run.rounds[round_number - 1].metrics
    local_record = local.rounds[round_number - 1].metrics
    users = {}
    for user_id, metrics in record.items():
        info = run.users.get(user_id)
        base = local.primary(user_id, local_record.get(user_id, {}))
        if info is None or base is None or "fallback-joined-share" not in metrics:
            continue
        if base == 0 or not math.isfinite(base):  # no relative change (as in delta.py)
            continue
        share = metrics["fallback-joined-share"]
        users[user_id] = UserRound(
            joined=metrics[f"joined-{info.metric}"],
            local=base,
            share=share,
            last_share=metrics.get("fallback-last-share", share),
            reported=metrics[info.metric],
            kept_lone=bool(metrics.get("fallback-local", 0.0)),
        )
    return users


def mismatches(pairs: Sequence[Pair], round_number: int) -> tuple[int, int]:
    """(user-rounds whose lone model differs from the local run, user-rounds that kept it)."""
    differ = kept = 0
    for pair in pairs:
        for user in user_rounds(pair, round_number).values():
            if user.kept_lone:
                kept += 1
                differ += not math.isclose(user.reported, user.local, rel_tol=1e-6, abs_tol=1e-9)
    return differ, kept


def _relative(value: float, base: float) -> float:
    return (value - base) / base * 100


def replay(
    pairs: Sequence[Pair],
    round_number: int,
    rule: str,
    confidence: float = 0.0,
    last_share: float = 0.0,
) -> Outcome:
    """The users' outcome at ``round_number`` had they decided by ``rule``.

    ``rule``: ``"thresholds"`` (joined where share >= confidence and last share >=
    last_share), ``"joined"`` (always) or ``"oracle"`` (where joined beats local on test).
    """
    improved, deltas, worsts = [], [], []
    for pair in pairs:
        changes = []
        for user in user_rounds(pair, round_number).values():
            if rule == "joined":
                keep = True
            elif rule == "oracle":
                keep = user.joined > user.local
            elif rule == "thresholds":
                keep = user.share >= confidence and user.last_share >= last_share
            else:
                raise ValueError(f"unknown rule {rule!r}: thresholds, joined or oracle")
            changes.append(_relative(user.joined if keep else user.local, user.local))
        if changes:
            improved.append(sum(c > 0 for c in changes) / len(changes))
            deltas.append(statistics.fmean(changes))
            worsts.append(min(changes))
    if not deltas:
        raise ValueError(f"no run with fallback shares reaches round {round_number}")
    return Outcome(
        improved=statistics.fmean(improved),
        delta=statistics.fmean(deltas),
        worst=statistics.fmean(worsts),
        lowest=min(worsts),
    )


def frontier(
    pairs: Sequence[Pair],
    round_number: int,
    confidences: Sequence[float],
    last_shares: Sequence[float],
) -> list[dict[str, float | str]]:
    """Rows of the table at one round: the two bounds, then every pair of thresholds."""
    rules: list[tuple[str, float, float]] = [("joined", 0.0, 0.0), ("oracle", 0.0, 0.0)]
    rules += [("thresholds", c, l) for c in confidences for l in last_shares]
    rows: list[dict[str, float | str]] = []
    for rule, confidence, last in rules:
        outcome = replay(pairs, round_number, rule, confidence, last)
        name = rule if rule != "thresholds" else f"confidence {confidence:g}, last {last:g}"
        rows.append({"round": round_number, "rule": name, **asdict(outcome)})
    return rows


def group_pairs(pairs: Sequence[Pair]) -> dict[str, list[Pair]]:
    """The pairs by variant: runs that differ in nothing but the seed share a group, named
    by the keys whose values differ between groups (``all runs`` where none do)."""
    ignored = BOOKKEEPING_KEYS - {"algorithm"} | {"seed"}
    keys = sorted({k for p in pairs for k in p.run.config} - ignored)
    varying = [k for k in keys if len({json.dumps(p.run.config.get(k)) for p in pairs}) > 1]
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        name = ", ".join(f"{k}={json.dumps(pair.run.config.get(k))}" for k in varying)
        groups.setdefault(name or "all runs", []).append(pair)
    return groups


def _print_rows(rows: Sequence[dict[str, float | str]]) -> None:
    header = (
        f"{'round':>5}  {'rule':<28} {'improved':>8} {'Delta %':>8} {'worst %':>8} {'lowest %':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['round']:>5}  {row['rule']:<28} {row['improved']:>8.2f} "
            f"{row['delta']:>+8.2f} {row['worst']:>+8.2f} {row['lowest']:>+8.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="dirs of runs")
    parser.add_argument("--rounds", type=int, nargs="*", default=[], help="default: the last")
    parser.add_argument("--confidence", type=float, nargs="+", default=list(CONFIDENCES))
    parser.add_argument("--last-share", type=float, nargs="+", default=list(LAST_SHARES))
    parser.add_argument("--output", type=Path, default=Path("fallback-frontier.json"))
    args = parser.parse_args(argv)
    pairs = pair_runs(complete_runs(args.runs))
    if not pairs:
        raise SystemExit(
            f"error: no collaborative run with fallback shares and its local run under "
            f"{[str(r) for r in args.runs]}; run a sweep with fallback on (the default) first"
        )
    shortest = min(len(p.run.rounds) for p in pairs)
    rounds = args.rounds or [shortest]
    if bad := [r for r in rounds if not 1 <= r <= shortest]:
        raise SystemExit(f"error: --rounds {bad} outside 1-{shortest}, the rounds every run has")
    groups = []
    for name, members in group_pairs(pairs).items():
        seeds = sorted({p.seed for p in members})
        print(f"{name}: {len(members)} runs (seeds {seeds}), each against its local run")
        rows, checks = [], {}
        for round_number in rounds:
            differ, kept = mismatches(members, round_number)
            checks[round_number] = {"lone-differs": differ, "lone-kept": kept}
            rows += frontier(members, round_number, args.confidence, args.last_share)
            if differ:
                print(
                    f"warning: round {round_number}: {differ} of {kept} user-rounds that kept "
                    "the lone model differ from the local run; the replay is approximate there"
                )
        _print_rows(rows)
        groups.append({"group": name, "seeds": seeds, "checks": checks, "rows": rows})
    args.output.write_text(json.dumps({"groups": groups}, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
