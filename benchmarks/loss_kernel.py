"""Benchmark: dense (paper-literal) vs factored Muscle loss, forward+backward on one device.

For each (B, M, d) it measures, each in a fresh subprocess so peak memory is its own:
- client time: factored = preparing the round's partner weights + forward + backward;
  dense = forward + backward from S_n and alpha_n (median of --repeats runs after a warm-up);
- peak memory: CUDA max_memory_allocated, or on the CPU the rise of the peak RSS (VmHWM,
  reset through /proc/self/clear_refs just before the step) over the RSS at that moment;
- payload bytes each user receives (float32).
Dense payloads over Flower's gRPC message limit are refused, as the library refuses them.

    python benchmarks/loss_kernel.py                  # CPU grid, writes docs/benchmarks.md
    python benchmarks/loss_kernel.py --device cuda    # GPU grid (B up to 256, M up to 5)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fedmuscle_flwr.markdown import write_markdown_section

CPU_GRID = [(b, m, d) for d in (256, 768) for b in (32, 64, 128) for m in (2, 3, 4)] + [
    (32, 5, 768)
]
GPU_GRID = [(b, m, d) for d in (256, 768) for b in (32, 64, 128, 256) for m in (2, 3, 4, 5)]
QUICK_GRID = [(32, 2, 256), (64, 3, 768), (32, 5, 768)]


DOC_TITLE = "# Benchmarks\n\nEvery number here was measured by the script named with it."


def worker(batch: int, num_others: int, dim: int, form: str, device: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from fedmuscle_flwr.loss import (
        MuscleObjective,
        build_dense_payload,
        dense_muscle_loss,
        dense_payload_bytes,
        factored_payload_numel,
    )

    try:
        from fedmuscle_flwr.wire import GRPC_MAX_MESSAGE_BYTES
    except ImportError:  # an accelerator image without Flower: its 1.39 gRPC limit
        GRPC_MAX_MESSAGE_BYTES = 2_147_483_647

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    latent = torch.randn(batch, dim, generator=g)
    views = [
        F.normalize(latent + torch.randn(batch, dim, generator=g), dim=-1).to(device)
        for _ in range(num_others + 1)
    ]
    z0, others = views[0], torch.stack(views[1:])
    tau, tau_alpha = 0.1, 0.1
    if form == "dense":
        payload = dense_payload_bytes(batch, num_others, dim, torch.float32)
        if payload > GRPC_MAX_MESSAGE_BYTES:
            return {"refused": True, "payload_bytes": payload}
        aggregated, log_alpha = build_dense_payload(others, tau_alpha=tau_alpha)
    else:
        payload = factored_payload_numel(batch, num_others, dim) * 4

    def step() -> float:
        z = z0.clone().requires_grad_()
        if form == "dense":
            loss = dense_muscle_loss(z, aggregated, log_alpha, tau=tau)
        else:
            loss = MuscleObjective(others, tau=tau, tau_alpha=tau_alpha)(z)
        loss.backward()
        sync()
        return float(loss)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    value = step()  # warm-up; also the peak-memory run
    peak = (
        torch.cuda.max_memory_allocated() - base
        if device.startswith("cuda")
        else proc_status_bytes("VmHWM") - base
    )
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(times),
        "peak_bytes": peak,
        "payload_bytes": payload,
        "loss": value,
    }


def proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return proc_status_bytes("VmRSS")


def run_one(batch: int, num_others: int, dim: int, form: str, device: str, repeats: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        f"{batch},{num_others},{dim},{form}",
        "--device",
        device,
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr
            else f"exit {done.returncode}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def human_seconds(s: float) -> str:
    return f"{s * 1000:.3g} ms" if s < 1 else f"{s:.3g} s"


def environment(device: str) -> str:
    import timm
    import torch

    name = (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    return (
        f"{dt.date.today().isoformat()}, device: {name}, torch {torch.__version__}, "
        f"timm {timm.__version__}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", choices=["full", "quick"], default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        b, m, d, form = args.worker.split(",")
        print(json.dumps(worker(int(b), int(m), int(d), form, args.device, args.repeats)))
        return

    grid = (
        QUICK_GRID
        if args.grid == "quick"
        else GPU_GRID
        if args.device.startswith("cuda")
        else CPU_GRID
    )
    header = (
        "| B | M | d | factored time | dense time | speed-up | factored peak mem | dense peak mem "
        "| factored payload | dense payload | payload ratio | abs. loss diff |"
    )
    rows = [header, "|" + "---|" * 12]
    results = {}
    print(header)
    for batch, num_others, dim in grid:
        fac = run_one(batch, num_others, dim, "factored", args.device, args.repeats)
        den = run_one(batch, num_others, dim, "dense", args.device, args.repeats)
        results[(batch, num_others, dim)] = (fac, den)
        if "error" in fac:
            row = f"| {batch} | {num_others} | {dim} | error: {fac['error']} |" + " |" * 8
        else:
            refused = den.get("refused") or "error" in den
            why = (
                "refused (over gRPC limit)" if den.get("refused") else f"error: {den.get('error')}"
            )
            row = (
                "| "
                + " | ".join(
                    [
                        str(batch),
                        str(num_others),
                        str(dim),
                        human_seconds(fac["seconds"]),
                        why if refused else human_seconds(den["seconds"]),
                        "" if refused else f"{den['seconds'] / fac['seconds']:.0f}x",
                        human_bytes(fac["peak_bytes"]),
                        "" if refused else human_bytes(den["peak_bytes"]),
                        human_bytes(fac["payload_bytes"]),
                        human_bytes(den["payload_bytes"]) if "payload_bytes" in den else "",
                        f"{den['payload_bytes'] / fac['payload_bytes']:.0f}x"
                        if "payload_bytes" in den
                        else "",
                        "" if refused else f"{abs(den['loss'] - fac['loss']):.1e}",
                    ]
                )
                + " |"
            )
        print(row, flush=True)
        rows.append(row)

    targets = []
    if not args.device.startswith("cuda"):
        fac, den = results.get((64, 3, 768), ({}, {}))
        if "seconds" in fac and "seconds" in den:
            speed, size = (
                den["seconds"] / fac["seconds"],
                den["payload_bytes"] / fac["payload_bytes"],
            )
            targets.append(
                f"- B=64, M=3, d=768: factored {speed:.0f}x faster than dense (target >= 100x): "
                f"{'met' if speed >= 100 else 'NOT met'}; "
                f"payload {size:.0f}x smaller (target >= 1000x): "
                f"{'met' if size >= 1000 else 'NOT met'}"
            )
        fac, _ = results.get((32, 5, 768), ({}, {}))
        if "seconds" in fac:
            targets.append(
                f"- B=32, M=5, d=768: factored forward+backward {human_seconds(fac['seconds'])} "
                f"(target < 0.5 s): {'met' if fac['seconds'] < 0.5 else 'NOT met'}"
            )
    print("\n".join(targets))
    section = "\n".join(
        [
            f"### Muscle loss kernel on {args.device}",
            "",
            f"Measured {environment(args.device)}, with "
            f"`python benchmarks/loss_kernel.py --device {args.device}`. "
            f"Median of {args.repeats} runs after a warm-up; tau = tau_alpha = 0.1; float32.",
            "",
            *rows,
            "",
            *targets,
        ]
    )
    write_markdown_section(args.out, f"loss_kernel:{args.device}", section, title=DOC_TITLE)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
