"""benchmarks/noise_floor.py: split sizes and round-to-round swing of local runs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from fedmuscle_flwr.federation import load_federation
from fedmuscle_flwr.launch import toml_overrides
from fedmuscle_flwr.results import RoundRecord, RunResults, UserInfo
from tests.tiny import TINY_FEDERATION

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "noise_floor.py"


def _run(tmp_path: Path, algorithm: str, values: list[float], name: str) -> None:
    users = {"u": UserInfo("u", "small-cnn", "image-classification", "accuracy")}
    rounds = [RoundRecord(i + 1, metrics={"u": {"accuracy": v}}) for i, v in enumerate(values)]
    config = {"algorithm": algorithm, "num-server-rounds": len(values)}
    RunResults(config=config, users=users, rounds=rounds).write(tmp_path / name)


def test_swing_is_the_relative_change_between_the_last_rounds_of_local_runs_only(tmp_path):
    module = runpy.run_path(str(SCRIPT))
    _run(tmp_path, "local", [0.1, 0.5, 0.4, 0.5], "local")
    _run(tmp_path, "muscle", [0.1, 0.9, 0.1, 0.9], "muscle")  # not a local run: left out
    runs = module["local_runs"]([tmp_path])
    assert [r.config["algorithm"] for r in runs] == ["local"]
    swing = module["round_swing"](runs, 3)
    assert swing["u"] == pytest.approx([20.0, 25.0])  # 0.5 -> 0.4 -> 0.5


def test_the_script_reports_every_users_split_sizes_per_seed(tmp_path):
    module = runpy.run_path(str(SCRIPT), run_name="noise_floor")
    output = tmp_path / "floor.json"
    overrides = toml_overrides(
        {"federation": TINY_FEDERATION, "public-size": 64, "validation-fraction": 0.25}
    )
    assert (
        module["main"](["--seeds", "0", "1", "--run-config", overrides, "--output", str(output)])
        == 0
    )
    table = json.loads(output.read_text())
    assert set(table["users"]) == {u.id for u in load_federation(TINY_FEDERATION).users}
    for sizes in table["users"].values():
        assert len(sizes["test"]) == len(sizes["validation"]) == 2  # one per seed
        assert all(v > 0 for v in sizes["validation"])
        assert sizes["swing"] == []  # no local runs given
