"""Benchmark: the fallback's paired bootstrap, closed-form scores against torchmetrics.

Each round a user with a validation split decides between its joined and its lone model
on 100 paired resamples of the validation outputs of the last ``fallback-window`` rounds
(:mod:`fedmuscle_flwr.training.bootstrap`). For the built-in primary metrics the resamples
are scored in closed form (:mod:`fedmuscle_flwr.training.resampled`); before, each
example's torchmetrics state was computed once and each resample's summed and computed
(accuracy, mIoU), or each resample was updated and computed (mAP). This times one
decision both ways on the default federation's shapes (validation examples per user,
classes, 32x32 masks, a window of 3 rounds), median of ``--repeats`` after a warm-up, and
checks the two give the same share. Prints a table and writes it to docs/benchmarks.md.

    python benchmarks/bootstrap_scores.py
    python benchmarks/bootstrap_scores.py --repeats 3 --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmuscle_flwr.markdown import write_markdown_section  # noqa: E402
from fedmuscle_flwr.tasks import get_task  # noqa: E402
from fedmuscle_flwr.training import bootstrap  # noqa: E402

DOC_TITLE = "# Benchmarks\n\nEvery number here was measured by the script named with it."
WINDOW = 3
#: (task, classes, validation examples of one user on the default federation)
CASES = [
    ("image-classification", 6, 68),  # two users share 900 train examples, 15 % held out
    ("multi-label-classification", 6, 135),  # one user, 900 train examples
    ("semantic-segmentation", 7, 135),
]


def inputs(task_name: str, classes: int, examples: int) -> tuple[torch.Tensor, ...]:
    """Two models' outputs over a window of rounds, each right on most examples, and targets."""
    g = torch.Generator().manual_seed(0)
    if task_name == "multi-label-classification":
        target = (torch.rand(examples, classes, generator=g) > 0.6).long()
        signal = target.float() - 0.5
    elif task_name == "semantic-segmentation":
        target = torch.randint(classes, (examples, 32, 32), generator=g)
        signal = torch.nn.functional.one_hot(target, classes).movedim(-1, 1).float()
    else:
        target = torch.randint(classes, (examples,), generator=g)
        signal = torch.nn.functional.one_hot(target, classes).float()
    target = target.repeat(WINDOW, *([1] * (target.dim() - 1)))
    signal = signal.repeat(WINDOW, *([1] * (signal.dim() - 1)))
    joined, alone = (signal + torch.randn(signal.shape, generator=g) for _ in range(2))
    if task_name == "multi-label-classification":
        joined, alone = joined.sigmoid(), alone.sigmoid()
    return joined, alone, target


def torchmetrics_share(task, classes: int, joined, alone, target) -> float:
    """The same decision with the closed forms switched off: torchmetrics scores every
    resample (additive states summed for accuracy and mIoU, each resample for mAP)."""
    closed_forms = bootstrap.resampled_scores
    bootstrap.resampled_scores = lambda *args: None
    try:
        return bootstrap.paired_bootstrap_share(task, classes, joined, alone, target, rounds=WINDOW)
    finally:
        bootstrap.resampled_scores = closed_forms


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds of ``repeats`` calls after one warm-up, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a user's)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for task_name, classes, examples in CASES:
        joined, alone, target = inputs(task_name, classes, examples)
        task = get_task(task_name)
        decide = partial(bootstrap.paired_bootstrap_share, task, classes, rounds=WINDOW)
        closed_s, closed = timed(partial(decide, joined, alone, target), args.repeats)
        reference = partial(torchmetrics_share, task, classes, joined, alone, target)
        before_s, before = timed(reference, args.repeats)
        rows.append({
            "task": task_name, "metric": task.primary_metric, "rows": len(target),
            "torchmetrics_ms": before_s * 1e3, "closed_form_ms": closed_s * 1e3,
            "speedup": before_s / closed_s, "share": closed, "share_before": before,
        })  # fmt: skip
        print(f"{task_name:28s} {before_s * 1e3:8.1f} ms -> {closed_s * 1e3:7.1f} ms "
              f"({before_s / closed_s:5.1f}x), share {closed:.3f} / {before:.3f}")  # fmt: skip
    lines = [
        "## The fallback's paired bootstrap: one decision",
        "",
        f"Measured {dt.date.today()}, CPU ({platform.machine()}, {args.threads} torch thread), "
        f"torch {torch.__version__}, Python {platform.python_version()}, with "
        f"`python benchmarks/bootstrap_scores.py --repeats {args.repeats}`. One decision: "
        f"{bootstrap.RESAMPLES} paired resamples of a window of {WINDOW} rounds of one user's "
        "validation outputs, on the default federation's shapes; median of the repeats "
        "after a warm-up. *torchmetrics*: each example's state once, each resample's summed "
        "and computed (accuracy, mIoU), or each resample updated and computed (mAP), as "
        "before 2026-12-07; *closed form*: every resample at once "
        "(`fedmuscle_flwr/training/resampled.py`). The share is the decision's input; both "
        "ways give the same.",
        "",
        "| task | metric | rows | torchmetrics (ms) | closed form (ms) | speed-up | share (both) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        same = "same" if row["share"] == row["share_before"] else f"{row['share_before']:.3f}"
        lines.append(
            f"| {row['task']} | {row['metric']} | {row['rows']} | {row['torchmetrics_ms']:.1f} | "
            f"{row['closed_form_ms']:.1f} | {row['speedup']:.1f}x | {row['share']:.3f} ({same}) |"
        )
    write_markdown_section(args.out, "bootstrap_scores:cpu", "\n".join(lines), title=DOC_TITLE)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(row["share"] == row["share_before"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
