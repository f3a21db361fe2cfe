"""Time the procedural world: generation, Dataset build, cache read. Prints a table.

Usage: python benchmarks/data_world.py [--sizes 1000 5000] [--image-sizes 32 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

from fedmuscle_flwr.data.world import (
    WorldConfig,
    generate_scenes,
    load_scenes,
    private_dataset,
)


def best_of(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args()
    header = (
        f"{'S':>4} {'n':>6} {'generate s':>11} {'img/s':>9} {'Dataset s':>10} {'cache read s':>13}"
    )
    print(header)
    print("-" * len(header))
    for s in args.image_sizes:
        cfg = WorldConfig(image_size=s)
        for n in args.sizes:
            gen = best_of(generate_scenes, cfg, "public", n)
            with tempfile.TemporaryDirectory() as tmp:
                load_scenes(cfg, "private/semantic-segmentation", n, cache_dir=tmp)
                read = best_of(load_scenes, cfg, "private/semantic-segmentation", n, cache_dir=tmp)
                build = best_of(
                    private_dataset, cfg, "semantic-segmentation", size=n, cache_dir=tmp
                )
            print(f"{s:>4} {n:>6} {gen:>11.3f} {n / gen:>9.0f} {build:>10.3f} {read:>13.3f}")


if __name__ == "__main__":
    main()
