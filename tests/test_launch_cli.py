"""What a launch is given: run-config overrides, free ports, ``fedmuscle_flwr.simulate``'s options.

Nothing is launched: ``simulate`` is replaced by one that records what it was asked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedmuscle_flwr import launch
from fedmuscle_flwr import simulate as simulate_module
from fedmuscle_flwr.launch import LaunchError, free_port, parse_toml_overrides, toml_overrides


def test_run_config_overrides_keep_quoted_values_with_spaces_and_their_types():
    text = """output-dir="my out" tau=0.2  federation='a b.toml' depths=[1, 2] s="1" dp=true"""
    assert parse_toml_overrides(text) == {
        "output-dir": "my out",
        "tau": 0.2,
        "federation": "a b.toml",
        "depths": [1, 2],
        "s": "1",
        "dp": True,
    }
    assert parse_toml_overrides('name="x  y=2" seed = 3') == {"name": "x  y=2", "seed": 3}
    assert parse_toml_overrides("") == {} and parse_toml_overrides("  ") == {}


def test_run_config_overrides_read_back_what_toml_overrides_wrote():
    values = {"output-dir": "my out/run 1", "quote": 'say "hi" \\o/', "tau": 0.1, "e": math.inf}
    assert parse_toml_overrides(toml_overrides(values)) == values


@pytest.mark.parametrize(
    ("text", "named"),
    [("tau=0.2 oops", "'oops'"), ('tau=0.2 output-dir="my out', "'output-dir=\"my out'")],
)
def test_a_bad_override_is_refused_naming_it(text: str, named: str):
    with pytest.raises(ValueError, match=f"cannot read override {named} as TOML key=value"):
        parse_toml_overrides(text)


def test_free_port_never_gives_out_a_port_twice(monkeypatch: pytest.MonkeyPatch):
    offered = iter([5001, 5001, 5002, 5001, 5002, 5003])  # the kernel offers a port again
    monkeypatch.setattr(launch, "_unbound_port", lambda: next(offered))
    monkeypatch.setattr(launch, "_PORTS_GIVEN", set())
    assert [free_port(), free_port(), free_port()] == [5001, 5002, 5003]
    monkeypatch.setattr(launch, "_unbound_port", lambda: 5002)
    with pytest.raises(OSError, match="not given out already"):
        free_port()


def test_free_ports_of_the_kernel_are_distinct():
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports) and all(1024 <= p < 65536 for p in ports)


class Launches:
    """Stands in for ``simulate.simulate``: records each call, then fails the launch."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Path]] = []

    def __call__(self, overrides: dict[str, Any], *, output_dir: Path) -> None:
        self.calls.append((overrides, output_dir))
        raise LaunchError("not launched in this test")


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Launches:
    fake = Launches()
    monkeypatch.setattr(simulate_module, "simulate", fake)
    monkeypatch.setattr(simulate_module, "exit_on_sigterm", lambda: None)  # pytest's handler
    return fake


def test_simulate_options_become_run_config_overrides(launches: Launches, tmp_path, capsys):
    argv = [
        "--algorithm", "pairwise", "--dataset", "real", "--rounds", "3", "--seed", "4",
        "--federation", "my fed.toml", "--output-dir", str(tmp_path / "outputs"),
        "--run-config", 'output-dir="my out" num-server-rounds=9 tau=0.2',
    ]  # fmt: skip
    assert simulate_module.main(argv) == 1
    ((overrides, output_dir),) = launches.calls
    assert overrides == {
        "output-dir": "my out",
        "num-server-rounds": 3,  # the option beats the same key in --run-config
        "tau": 0.2,
        "algorithm": "pairwise",
        "dataset": "real",
        "seed": 4,
        "federation": "my fed.toml",
    }
    assert output_dir.parent == tmp_path / "outputs"  # <output-dir>/<label>
    assert "error: not launched in this test" in capsys.readouterr().out


def test_simulate_without_options_overrides_nothing(launches: Launches):
    assert simulate_module.main([]) == 1
    ((overrides, output_dir),) = launches.calls
    assert overrides == {} and output_dir.parent == Path("outputs")


def test_simulate_resume_continues_the_stopped_runs_configuration(launches: Launches, tmp_path):
    run_dir = tmp_path / "outputs" / "20260101-000000" / "run-1"
    run_dir.mkdir(parents=True)
    config = {"algorithm": "muscle", "num-server-rounds": 4, "output-dir": "elsewhere"}
    (run_dir / "results.json").write_text(json.dumps({"config": config}))
    assert simulate_module.main(["--resume", str(run_dir), "--rounds", "6"]) == 1
    ((overrides, output_dir),) = launches.calls
    assert overrides == {
        "algorithm": "muscle",
        "num-server-rounds": 6,
        "resume-from": str(run_dir.resolve()),
    }
    assert output_dir == run_dir.parent  # the resumed run writes into its own directory


def test_simulate_refuses_bad_options_before_launching(launches: Launches, capsys):
    assert simulate_module.main(["--run-config", "tau="]) == 1
    assert "error: cannot read override 'tau='" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        simulate_module.main(["--algorithm", "no-such-algorithm"])
    assert exited.value.code == 2
    assert simulate_module.main(["--resume", "/nonexistent/run-1"]) == 1
    assert "--resume: no results.json" in capsys.readouterr().out
    assert launches.calls == []
