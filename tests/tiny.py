"""The tiny federation and run config that the end-to-end tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_FEDERATION = str(Path(__file__).parent / "fixtures" / "federation_tiny.toml")


def tiny_run_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Run config of a 2-round run of the tiny federation, writing under ``tmp_path``."""
    return {
        "num-server-rounds": 2,
        "federation": TINY_FEDERATION,
        "public-size": 64,
        "public-batch-size": 8,
        "embed-dim": 16,
        "num-partners": 2,
        "local-steps": 2,
        "batch-size": 8,
        "output-dir": str(tmp_path / "out"),
        "state-dir": str(tmp_path / "state"),
        "node-wait-timeout": 1.0,
    } | overrides
