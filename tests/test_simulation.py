"""A real `flwr run` local simulation: Flower's SuperLink, Ray, and both apps."""

from __future__ import annotations

import json

import pytest

from fedmuscle_flwr.launch import processes_using_home, run_simulation
from fedmuscle_flwr.results import RunResults
from tests.tiny import TINY_FEDERATION, tiny_run_config


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_flwr_run_two_rounds_on_four_task_types(tmp_path):
    home = tmp_path / "flwr-home"
    run_config = tiny_run_config(tmp_path)
    path = run_simulation(run_config, num_supernodes=4, output_dir=tmp_path / "out", flwr_home=home)
    results = RunResults.from_dict(json.loads(path.read_text()))
    assert results.config["federation"] == TINY_FEDERATION
    assert len(results.users) == 4
    assert [r.round for r in results.rounds] == [1, 2]
    assert all(len(r.replied) == 4 and not r.failed for r in results.rounds)
    assert all(v > 0 for v in results.rounds[1].downlink_bytes.values())  # payloads in round 2
    assert (path.parent / "metrics.png").exists() and (path.parent / "bytes.png").exists()
    # The background SuperLink that `flwr run` started is gone.
    assert processes_using_home(home.resolve()) == []


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_flwr_run_with_fewer_supernodes_than_users_stops_and_names_them(tmp_path):
    """Plain `flwr run` with Flower's default node count must not silently drop users."""
    home = tmp_path / "flwr-home"
    run_config = tiny_run_config(tmp_path, **{"num-server-rounds": 5})
    path = run_simulation(run_config, num_supernodes=2, output_dir=tmp_path / "out", flwr_home=home)
    results = RunResults.from_dict(json.loads(path.read_text()))
    assert results.status == "failed"
    assert len(results.rounds) == 1  # stopped at the first exchange, not after 5 rounds
    assert results.missing_users == ["segformer-seg", "bert-text"]
    assert "num-supernodes=4" in results.reason
    assert processes_using_home(home.resolve()) == []


@pytest.mark.integration
@pytest.mark.slow  # CI: the killed-and-resumed test below compares two launches as well
@pytest.mark.timeout(900)
def test_the_same_seed_gives_the_same_run(tmp_path):
    """A run is a function of (config, federation, seed): two `flwr run` launches agree bit
    for bit on every metric, though Ray hands users to workers in another order."""
    metrics = []
    for launch in ("first", "second"):
        run_config = tiny_run_config(
            tmp_path / launch, **{"num-server-rounds": 3, "validation-fraction": 0.2}
        )
        path = run_simulation(
            run_config, num_supernodes=4, output_dir=tmp_path / launch / "out",
            flwr_home=tmp_path / launch / "home",
        )  # fmt: skip
        results = RunResults.from_dict(json.loads(path.read_text()))
        assert results.status == "complete", results.reason
        metrics.append(
            [
                {
                    u: {k: v for k, v in m.items() if not k.endswith("-seconds")}
                    for u, m in r.metrics.items()
                }
                for r in results.rounds
            ]
            + [r.partners for r in results.rounds]
        )
    assert metrics[0] == metrics[1]
    assert any("contrastive-loss" in m for m in metrics[0][2].values())  # contrast happened


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_killed_launch_resumed_ends_as_an_uninterrupted_one(tmp_path):
    """SIGKILL of the whole `simulate` launch after round 2, then `simulate --resume DIR`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fedmuscle_flwr.launch import stop_processes, toml_overrides

    rounds = {"num-server-rounds": 4, "validation-fraction": 0.2}
    whole = tmp_path / "whole"
    path = run_simulation(
        tiny_run_config(whole, **rounds), num_supernodes=4, output_dir=whole / "out",
        flwr_home=whole / "home",
    )  # fmt: skip
    expected = RunResults.from_dict(json.loads(path.read_text()))

    killed = tmp_path / "killed"
    home = (killed / "home").resolve()
    config = tiny_run_config(killed, **rounds)
    config.pop("output-dir")
    launch = [sys.executable, "-m", "fedmuscle_flwr.simulate", "--output-dir", str(killed / "out")]
    env = os.environ | {"FEDMUSCLE_FLWR_HOME": str(home)}
    proc = subprocess.Popen(
        [*launch, "--run-config", toml_overrides(config)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = list((killed / "out").glob("*/run-*/results.json"))
            if done and len(json.loads(done[0].read_text())["rounds"]) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the launch did not finish round 2")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole launch, as an operator's kill -9
        proc.wait()
        stop_processes(processes_using_home(home), grace=2.0)  # its background SuperLink
    run_dir = done[0].parent
    assert json.loads(done[0].read_text())["status"] == "running"

    resumed = subprocess.run(
        [*launch, "--resume", str(run_dir)], env=os.environ | {"FEDMUSCLE_FLWR_HOME": str(home)},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    stop_processes(processes_using_home(home), grace=2.0)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    results = RunResults.from_dict(json.loads((run_dir / "results.json").read_text()))
    assert results.status == "complete"

    def learning(r: RunResults) -> list:
        return [
            {
                u: {k: v for k, v in m.items() if not k.endswith("-seconds")}
                for u, m in x.metrics.items()
            }
            for x in r.rounds
        ] + [x.partners for x in r.rounds]

    assert learning(results) == learning(expected)
