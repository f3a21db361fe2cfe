"""Benchmark: the server's work per round against the number of users that replied.

For N arrived users it times, on one device, what the strategy does between the last
reply of a round and the next instructions: every user's payload
(:func:`fedmuscle_flwr.aggregation.build_payloads`: the N diagonal Gram blocks, linear CKA
and relevance-aware partners, each user's partner-pair blocks) and, separately, the
screening of the N representations (:func:`fedmuscle_flwr.screening.screen`). Random unit
Z of the default shape (B = 64, d = 128), M = 3; median of ``--repeats`` after a warm-up.
Prints a table and writes it to docs/benchmarks.md.

    python benchmarks/server_scaling.py                     # N = 10, 32, 128, 512 on the CPU
    python benchmarks/server_scaling.py --users 10 128 1024 --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from fedmuscle_flwr.aggregation import build_payloads
from fedmuscle_flwr.markdown import write_markdown_section
from fedmuscle_flwr.screening import screen

DOC_TITLE = "# Benchmarks\n\nEvery number here was measured by the script named with it."
TARGET_USERS, TARGET_SECONDS = 512, 0.5  # issue 10: aggregation for 512 users under 0.5 s


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[10, 32, 128, 512])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    )
    args = parser.parse_args()
    header = (
        "| users N | payloads, relevance partners | payloads, random partners "
        "| screening | payload per user |"
    )
    rows = [header, "|---|---|---|---|---|"]
    print(header)
    by_users: dict[int, float] = {}
    for users in args.users:
        g = torch.Generator().manual_seed(0)
        reps = {
            n: F.normalize(torch.randn(args.batch, args.dim, generator=g), dim=-1)
            for n in range(users)
        }

        def payloads(selection: str, reps: dict[int, torch.Tensor] = reps) -> object:
            return build_payloads(
                reps, num_partners=args.partners, tau_alpha=0.1, device=args.device,
                generator=torch.Generator().manual_seed(1), selection=selection,
            )  # fmt: skip

        relevance = timed(lambda: payloads("relevance"), args.repeats, args.device)
        random = timed(lambda: payloads("random"), args.repeats, args.device)
        screening = timed(
            lambda reps=reps: screen(reps, mode="flag", generator=torch.Generator().manual_seed(2)),
            args.repeats, args.device,
        )  # fmt: skip
        one = next(iter(payloads("relevance").values()))  # type: ignore[attr-defined]
        kib = one.numel() * 4 / 1024
        by_users[users] = relevance
        row = (
            f"| {users} | {relevance * 1000:.0f} ms | {random * 1000:.0f} ms "
            f"| {screening * 1000:.0f} ms | {kib:.0f} KiB |"
        )
        rows.append(row)
        print(row, flush=True)
    threads = torch.get_num_threads()
    device = "CUDA " + torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    lines = [
        f"### Server work per round against the number of users ({args.device})",
        "",
        f"Measured {dt.date.today()}, {device} ({platform.machine()}, {threads} threads), "
        f"torch {torch.__version__}, Python {platform.python_version()}, with "
        f"`python benchmarks/server_scaling.py --device {args.device}`. Random unit Z, "
        f"B = {args.batch}, d = {args.dim}, M = {args.partners}; median of {args.repeats} "
        "after a warm-up. Payloads: every user's partners and log-alpha factors "
        "(`build_payloads`); screening: `screen` (16 permutations per user).",
        "",
        *rows,
    ]
    if TARGET_USERS in by_users:
        seconds = by_users[TARGET_USERS]
        met = "met" if seconds < TARGET_SECONDS else "not met"
        lines += [
            "",
            f"- payloads for {TARGET_USERS} arrived users: {seconds:.3f} s "
            f"(target < {TARGET_SECONDS} s): {met}",
        ]
    section = "\n".join(lines)
    write_markdown_section(args.out, f"server_scaling:{args.device}", section, title=DOC_TITLE)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
