"""Delta vs local (ALGORITHM.md): each user's relative change, the worst, the share improved."""

from __future__ import annotations

import math
import statistics

from fedmuscle_flwr.results import RunResults

__all__ = ["delta_table", "relative_changes"]


def relative_changes(
    local: RunResults, run: RunResults, *, joined: bool = False
) -> dict[str, float]:
    """Each user's (m - m_local) / m_local * 100 on its final primary metric.

    ``joined``: of the joined model's metric (``joined-<metric>``, reported under the
    fallback) where the run has it, so a user that kept its lone model still shows what
    collaboration did to its joined one. Users missing from either run, or with a local
    metric of 0, are left out.
    """
    changes: dict[str, float] = {}
    local_final = local.final
    for user_id, metrics in run.final.items():
        ours = run.primary(user_id, metrics)
        info = run.users.get(user_id)
        if joined and info is not None and "fallback-local" in metrics:
            ours = metrics.get(f"joined-{info.metric}")  # None: a run from before the key
        base = local.primary(user_id, local_final.get(user_id, {}))
        if ours is None or base is None or base == 0 or not math.isfinite(base):
            continue
        changes[user_id] = (ours - base) / base * 100
    return changes


def delta_table(local: RunResults, others: dict[str, RunResults]) -> dict[str, dict[str, float]]:
    """Delta of ALGORITHM.md against ``local``, plus the worst user and the share that improved.

    For each algorithm: ``delta`` = mean over users of (m - m_local) / m_local * 100 on the
    users' primary metrics; ``worst`` = the smallest of those relative changes;
    ``improved`` = the share of users with m > m_local; ``joined`` = Delta of the joined
    models (:func:`relative_changes` with ``joined``; NaN where a user's is unknown). Users
    missing from either run, or with a local metric of 0, are left out and counted in
    ``skipped``.
    """
    table: dict[str, dict[str, float]] = {}
    for name, run in others.items():
        changes = list(relative_changes(local, run).values())
        joined = list(relative_changes(local, run, joined=True).values())
        skipped = len(run.final) - len(changes)
        table[name] = {
            "delta": statistics.fmean(changes) if changes else math.nan,
            "joined": statistics.fmean(joined)
            if joined and len(joined) == len(changes)
            else math.nan,
            "worst": min(changes) if changes else math.nan,
            "improved": sum(c > 0 for c in changes) / len(changes) if changes else math.nan,
            "users": float(len(changes)),
            "skipped": float(skipped),
        }
    return table
