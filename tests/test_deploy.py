"""Real deployment on loopback: SuperLink and SuperNodes as processes, TLS, SuperNode auth.

Everything goes through the deploy/ scripts. Every process a test starts runs in its own
session (process group) and is stopped by group, then by its FLWR_HOME (launch.py's
helpers), also when the test fails. Ports are picked free at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedmuscle_flwr.launch import free_port, processes_using_home, stop_processes, toml_overrides
from server_app import fast_grid
from server_app.fast_grid import PollingGrid, wrap_grid
from tests.clock import FakeClock
from tests.tiny import TINY_FEDERATION

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def flower_bin(executable: str, path: str) -> Path | None:
    """The bin/ holding Flower's commands: ``executable``'s environment's, else on ``path``."""
    found = shutil.which("flower-superlink", path=f"{Path(executable).parent}{os.pathsep}{path}")
    return None if found is None else Path(found).parent


#: Where the tests and the deploy scripts (FLWR_BIN_DIR) take Flower from: the running
#: interpreter's environment (not resolved: a venv's python links outside it), else PATH.
FLOWER_BIN = flower_bin(sys.executable, os.environ.get("PATH", ""))
HAVE_FLOWER = FLOWER_BIN is not None
BIN = FLOWER_BIN or Path(sys.executable).parent
needs_flower = pytest.mark.skipif(not HAVE_FLOWER, reason="run scripts/setup.sh first")


def _env(home: Path) -> dict[str, str]:
    return os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_BIN_DIR": str(BIN),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _script(name: str, *args: str, home: Path | None = None, **kw: Any):
    env = _env(home) if home else _env(Path(os.environ.get("FLWR_HOME", "/nonexistent")))
    return subprocess.run(
        ["bash", str(DEPLOY / name), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        **kw,
    )


def _free_ports(n: int) -> list[int]:
    """``n`` free ports, none of them given out before in this process."""
    return [free_port() for _ in range(n)]


def _wait_for(path: Path, pattern: str, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text(errors="replace")):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    text = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise AssertionError(f"no {pattern!r} in {path} within {timeout:.0f} s:\n{text}")


class Cluster:
    """Processes started through deploy/ scripts, each in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.homes: list[Path] = []
        self.fleet, self.control = _free_ports(2)
        self.cli_home = root / "cli-home"
        self.cli_home.mkdir()
        self.homes.append(self.cli_home)

    def start(self, name: str, script: str, *args: str, home: Path) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        self.homes.append(home)
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(
            ["bash", str(DEPLOY / script), *args],
            env=_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for name, proc in self.procs.items():
            if proc.poll() is None:
                self.kill(name, signal.SIGKILL)
                proc.wait(timeout=10)
        # Children that left the group (Flower detaches its SuperExec) carry FLWR_HOME.
        for home in self.homes:
            stop_processes(processes_using_home(home.resolve()), grace=5.0)

    # ---------------------------------------------------------------- steps
    def certs_and_keys(self, names: list[str]) -> None:
        done = _script("make-certs.sh", str(self.root / "certs"))
        assert done.returncode == 0, done.stderr
        done = _script("make-node-keys.sh", str(self.root / "keys"), *names)
        assert done.returncode == 0, done.stderr

    def start_superlink(self) -> None:
        proc = self.start(
            "superlink",
            "start-superlink.sh",
            "--certs", str(self.root / "certs"),
            "--database", str(self.root / "superlink" / "state.db"),
            "--fleet-address", f"127.0.0.1:{self.fleet}",
            "--host", "127.0.0.1", "--port", str(self.control),
            home=self.root / "superlink" / "home",
        )  # fmt: skip
        _wait_for(self.logs / "superlink.log", "Uvicorn running on", 60, proc)
        done = _script(
            "write-flwr-config.sh",
            "--name", "test", "--address", f"127.0.0.1:{self.control}",
            "--ca", str(self.root / "certs" / "ca.crt"),
            home=self.cli_home,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def register(self, names: list[str]) -> dict[str, str]:
        keys = [str(self.root / "keys" / f"{n}.pub") for n in names]
        done = _script("register-nodes.sh", "--connection", "test", *keys, home=self.cli_home)
        assert done.returncode == 0, done.stderr
        return dict(line.split() for line in done.stdout.splitlines())

    def start_node(self, user: str, port: int, *flags: str) -> subprocess.Popen:
        node = self.root / "nodes" / user
        return self.start(
            f"node-{user}",
            "start-supernode.sh",
            "--superlink", f"127.0.0.1:{self.fleet}",
            "--ca", str(self.root / "certs" / "ca.crt"),
            "--key", str(self.root / "keys" / user),
            "--user", user, "--state-dir", str(node / "state"),
            "--data-dir", str(node / "data"), "--port", str(port), *flags,
            home=node / "home",
        )  # fmt: skip

    def launch(self, name: str, *command: str) -> subprocess.Popen:
        """A command of the operator's (its own process group), logged to logs/NAME.log."""
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(
            command, env=_env(self.cli_home), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def flwr_run(self, name: str, run_config: dict[str, Any]) -> subprocess.Popen:
        """``flwr run`` of this project against the cluster, streaming to logs/NAME.log."""
        return self.launch(
            name, str(BIN / "flwr"), "run", str(ROOT), "test", "--stream",
            "--run-config", toml_overrides(run_config),
        )  # fmt: skip

    def start_nodes(self, users: list[str], *flags: str) -> dict[str, int]:
        """One SuperNode per user, connected (and its warm worker preloaded); their ports."""
        ports = dict(zip(users, _free_ports(len(users)), strict=True))
        for user in users:
            self.start_node(user, ports[user], *flags)
        patterns = ["SuperNode ID"] + ([] if "--cold" in flags else ["preloaded"])
        for user in users:
            for pattern in patterns:
                _wait_for(self.logs / f"node-{user}.log", pattern, 90, self.procs[f"node-{user}"])
        return ports


#: The run config of the cluster tests: tiny users, 3 of the tiny federation's 4.
TINY_RUN = {
    "federation": TINY_FEDERATION, "public-size": 64, "public-batch-size": 8, "embed-dim": 16,
    "num-partners": 2, "local-steps": 2, "batch-size": 8, "min-nodes": 3, "quorum": 2,
    "grid-poll-interval": 0.2, "allow-missing-users": True,
}  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


# -------------------------------------------------------------------- script contracts


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("start-superlink.sh", ["--database", "/tmp/x.db"], "--certs is required"),
        ("start-supernode.sh", ["--superlink", "h:1", "--user", "u"], "--ca and --key are"),
        ("write-flwr-config.sh", ["--address", "h:1"], "--ca is required"),
    ],
)
def test_insecure_only_when_asked_for(script, args, message):
    done = _script(script, *args, "--dry-run") if "start" in script else _script(script, *args)
    assert done.returncode == 2
    assert message in done.stderr and "--insecure explicitly" in done.stderr


@needs_flower
def test_secure_commands_and_explicit_insecure(tmp_path):
    certs = tmp_path / "certs"
    assert (
        _script("make-certs.sh", str(certs), "--san", "link.example.org,10.0.0.5").returncode == 0
    )
    san = subprocess.run(
        ["openssl", "x509", "-in", str(certs / "server.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "DNS:link.example.org" in san and "IP Address:10.0.0.5" in san
    assert _script("make-node-keys.sh", str(tmp_path / "keys"), "n1").returncode == 0
    assert (tmp_path / "keys" / "n1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")

    link = _script("start-superlink.sh", "--certs", str(certs), "--database", "s.db", "--dry-run")
    assert link.returncode == 0, link.stderr
    for flag in (
        "--enable-supernode-auth",
        "--ssl-certfile",
        "--ssl-ca-certfile",
        "--fleet-api-type grpc-rere",
        "--disable-runtime-dependency-installation",
    ):
        assert flag in link.stdout
    assert "--insecure" not in link.stdout

    node = _script(
        "start-supernode.sh", "--superlink", "h:9092", "--user", "convnext-cls",
        "--ca", str(certs / "ca.crt"), "--key", str(tmp_path / "keys" / "n1"), "--dry-run",
    )  # fmt: skip
    assert node.returncode == 0, node.stderr
    assert "--root-certificates" in node.stdout and "--auth-supernode-private-key" in node.stdout
    assert 'user=\\"convnext-cls\\"' in node.stdout and "--insecure" not in node.stdout

    insecure = _script("start-superlink.sh", "--insecure", "--database", "s.db", "--dry-run")
    assert insecure.returncode == 0 and "--insecure" in insecure.stdout
    assert "--enable-supernode-auth" not in insecure.stdout
    assert "WARNING: insecure" in insecure.stderr


@needs_flower
def test_resume_script_reruns_the_stopped_run_with_its_own_config(tmp_path):
    run_dir = tmp_path / "out" / "run-7"
    assert "give the run's results directory" in _script("resume-run.sh", str(run_dir)).stderr
    run_dir.mkdir(parents=True)
    config = {"num-server-rounds": 6, "federation": "tiny", "output-dir": str(tmp_path / "out")}
    (run_dir / "results.json").write_text(json.dumps({"config": config}))
    done = _script("resume-run.sh", str(run_dir))
    assert done.returncode == 2 and "no checkpoint.pt" in done.stderr  # nothing to resume yet
    (run_dir / "checkpoint.pt").write_bytes(b"")
    done = _script("resume-run.sh", "--connection", "prod", str(run_dir), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f" run {ROOT} prod --stream --run-config " in done.stdout
    assert "num-server-rounds=6" in done.stdout and 'federation=\\"tiny\\"' in done.stdout
    assert f'resume-from=\\"{run_dir}\\"' in done.stdout and "output-dir" not in done.stdout


@needs_flower
def test_start_scripts_refuse_private_keys_others_can_read(tmp_path):
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    assert _script("make-certs.sh", str(certs)).returncode == 0
    assert _script("make-node-keys.sh", str(keys), "n1").returncode == 0
    assert (certs / "server.key").stat().st_mode & 0o777 == 0o600
    assert (keys / "n1").stat().st_mode & 0o777 == 0o600

    def link():
        return _script(
            "start-superlink.sh", "--certs", str(certs),
            "--database", str(tmp_path / "db" / "s.db"), "--dry-run",
        )  # fmt: skip

    def node():
        return _script(
            "start-supernode.sh", "--superlink", "h:9092", "--user", "u1", "--dry-run",
            "--ca", str(certs / "ca.crt"), "--key", str(keys / "n1"),
            "--state-dir", str(tmp_path / "state"), "--data-dir", str(tmp_path / "data"),
        )  # fmt: skip

    for mode in (0o640, 0o604):
        (certs / "server.key").chmod(mode)
        (keys / "n1").chmod(mode)
        refused, refused_node = link(), node()
        assert refused.returncode == 2 and refused_node.returncode == 2
        assert f"{certs / 'server.key'} is readable by group or others" in refused.stderr
        assert f"{keys / 'n1'} is readable by group or others" in refused_node.stderr
        assert "chmod 600" in refused.stderr
        assert "PRIVATE KEY" not in refused.stderr + refused_node.stderr
    (certs / "server.key").chmod(0o600)
    (keys / "n1").chmod(0o400)
    assert link().returncode == 0 and node().returncode == 0
    for made in (tmp_path / "db", tmp_path / "state", tmp_path / "data"):
        assert made.stat().st_mode & 0o777 == 0o700, made


@pytest.mark.parametrize("script", ["warm_clientapp.py", "supernode_fast_poll.py"])
def test_helpers_on_flower_internals_refuse_another_flower_version(script):
    """They reach into Flower 1.39's private modules: on another release they stop, clearly."""
    code = (
        "import sys, runpy, flwr; flwr.__version__ = '1.40.0'; "
        f"sys.argv = [{script!r}, '0.5']; "
        f"runpy.run_path({str(DEPLOY / script)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "1.39" in done.stderr and "1.40.0" in done.stderr


@needs_flower
def test_warm_worker_stops_on_sigterm_within_seconds_and_with_its_supernode(tmp_path):
    (port,) = _free_ports(1)  # nothing listens there: the worker keeps retrying its poll
    parent = subprocess.Popen(["sleep", "300"])
    workers = []
    for extra in ([], ["--parent-pid", str(parent.pid)]):
        log = (tmp_path / f"worker{len(workers)}.log").open("w")
        command = [sys.executable, str(DEPLOY / "warm_clientapp.py"), "--preload", ""]
        command += ["--runtime-api-address", f"127.0.0.1:{port}", "--stop-grace", "5", *extra]
        env = _env(tmp_path / "home")
        workers.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    for i in range(2):
        _wait_for(tmp_path / f"worker{i}.log", "warm ClientApp executor on", 60, workers[i])
    started = time.monotonic()
    workers[0].send_signal(signal.SIGTERM)
    assert workers[0].wait(timeout=15) == 0
    parent.kill()  # its SuperNode is gone: the worker goes too
    parent.wait()
    assert workers[1].wait(timeout=15) == 0
    assert time.monotonic() - started < 15
    assert "SIGTERM: stopping" in (tmp_path / "worker0.log").read_text()


@needs_flower
def test_a_supernode_deaf_to_sigterm_is_killed_with_its_children_after_the_grace(tmp_path):
    """A SuperNode stuck in a call handles SIGTERM late: the script kills it, never hangs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "flower-superlink").symlink_to(BIN / "flower-superlink")
    pids = tmp_path / "pids"
    deaf = bin_dir / "flower-supernode"  # ignores SIGTERM, holds a child, reports both
    deaf.write_text(
        f"#!{sys.executable}\n"
        "import signal, subprocess, time, os\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(300)\n"
    )
    deaf.chmod(0o755)
    log = (tmp_path / "node.log").open("w")
    command = ["bash", str(DEPLOY / "start-supernode.sh"), "--superlink", "127.0.0.1:1"]
    command += ["--user", "cnn-cls", "--insecure", "--cold"]
    env = _env(tmp_path / "home") | {"FLWR_BIN_DIR": str(bin_dir), "FEDMUSCLE_STOP_GRACE": "2"}
    node = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (pids.exists() and " " in pids.read_text()):
            assert time.monotonic() < deadline and node.poll() is None, (
                tmp_path / "node.log"
            ).read_text()
            time.sleep(0.1)
        supernode, child = (int(pid) for pid in pids.read_text().split())
        started = time.monotonic()
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 143
        assert 1 <= time.monotonic() - started < 10  # the grace counts whole seconds
        time.sleep(0.2)  # the killed grandchild is reaped by init
        for pid in (supernode, child):
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
            )
        assert "killing pid(s)" in (tmp_path / "node.log").read_text()
    finally:
        if node.poll() is None:
            node.kill()


def test_flower_is_taken_from_the_interpreters_environment_else_from_path(tmp_path):
    venv, elsewhere = tmp_path / "venv" / "bin", tmp_path / "elsewhere"
    for directory in (venv, elsewhere):
        directory.mkdir(parents=True)
        (directory / "flower-superlink").write_text("#!/bin/sh\n")
        (directory / "flower-superlink").chmod(0o755)
    (venv / "python").touch()
    assert flower_bin(str(venv / "python"), str(elsewhere)) == venv
    (venv / "flower-superlink").unlink()
    assert flower_bin(str(venv / "python"), f"/nonexistent{os.pathsep}{elsewhere}") == elsewhere
    assert flower_bin(str(venv / "python"), "/nonexistent") is None
    assert _env(tmp_path)["FLWR_BIN_DIR"] == str(BIN)


def test_keys_and_certificates_never_go_into_the_repo():
    for script, extra in (("make-certs.sh", []), ("make-node-keys.sh", ["n1"])):
        done = _script(script, str(ROOT / "secrets"), *extra)
        assert done.returncode == 2 and "inside the repository" in done.stderr
    assert not (ROOT / "secrets").exists()


# -------------------------------------------------------------------- PollingGrid


class _FakeGrid:
    """Replies to every pushed message on the ``ready_after``-th pull; counts pulls."""

    def __init__(self, ready_after: int) -> None:
        self.ready_after = ready_after
        self.pulls = 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []

        class _Reply:
            def __init__(self, mid):
                self.metadata = type("M", (), {"reply_to_message_id": mid})()

        return [_Reply(m) for m in ids]

    def get_node_ids(self):
        return [1, 2]


def test_polling_grid_polls_at_its_interval_and_honours_the_timeout(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(fast_grid, "time", clock)
    fake = _FakeGrid(ready_after=3)
    grid = PollingGrid(fake, 0.05)  # type: ignore[arg-type]
    replies = list(grid.send_and_receive([object(), object()], timeout=10))
    assert len(replies) == 2 and fake.pulls == 3
    assert clock.sleeps == [0.05, 0.05]  # Flower's HttpGrid would sleep 2 x 3 s here
    clock.sleeps.clear()
    never = _FakeGrid(ready_after=10**9)
    slow = PollingGrid(never, 0.05)  # type: ignore[arg-type]
    start = clock.now
    assert list(slow.send_and_receive([object()], timeout=0.32)) == []
    assert clock.now - start == pytest.approx(0.32)  # up to the deadline, not past it
    assert clock.sleeps[:6] == [0.05] * 6 and clock.sleeps[6] == pytest.approx(0.02)
    assert never.pulls == 8  # one more pull at the deadline
    clock.sleeps.clear()
    untimed = _FakeGrid(ready_after=5)
    patient = PollingGrid(untimed, 0.5)  # type: ignore[arg-type]
    assert len(list(patient.send_and_receive([object()]))) == 1  # timeout None: all replies
    assert untimed.pulls == 5 and clock.sleeps == [0.5] * 4
    assert wrap_grid(grid, 0.1) is grid and grid.poll_interval == 0.1
    assert list(grid.get_node_ids()) == [1, 2]
    with pytest.raises(ValueError, match="poll_interval"):
        PollingGrid(fake, 0)  # type: ignore[arg-type]


# -------------------------------------------------------------------- real clusters


@needs_flower
@pytest.mark.timeout(420)
def test_local_demo_runs_two_rounds_and_leaves_nothing_behind(tmp_path):
    workdir = tmp_path / "demo"
    done = subprocess.run(
        ["bash", str(DEPLOY / "local-demo.sh"), "--workdir", str(workdir)],
        env=_env(tmp_path / "unused-home"),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert "OK: 4 SuperNodes, 2 rounds, results checked" in done.stderr
    results = json.loads(sorted((workdir / "out").glob("run-*/results.json"))[-1].read_text())
    assert {u["model"] for u in results["users"]} == {
        "small-cnn",
        "vit",
        "segformer",
        "bert",
    }
    assert len({u["task"] for u in results["users"]}) == 4
    assert all(len(r["replied"]) == 4 and not r["failed"] for r in results["rounds"])
    assert all(v > 0 for v in results["rounds"][1]["downlink_bytes"].values())
    # Every process it started is gone: nothing runs with one of its Flower homes.
    homes = [workdir / "superlink" / "flwr-home", workdir / "cli" / "flwr-home"]
    homes += [p / "flwr-home" for p in (workdir / "nodes").iterdir()]
    assert all(processes_using_home(h.resolve()) == [] for h in homes)
    # TLS and authentication were on.
    link_log = (workdir / "logs" / "superlink.log").read_text()
    assert "--enable-supernode-auth" in link_log and "--insecure" not in link_log


@needs_flower
@pytest.mark.timeout(300)
def test_unregistered_supernode_is_refused_and_a_killed_one_is_left_out(cluster: Cluster):
    users = ["cnn-cls", "vit-multilabel", "bert-text"]
    cluster.certs_and_keys([*users, "intruder"])
    cluster.start_superlink()
    ids = cluster.register(users)
    assert set(ids) == set(users)

    # A SuperNode whose key was never registered is refused and exits.
    (port,) = _free_ports(1)
    intruder = cluster.start_node("intruder", port, "--activate-timeout", "0")
    assert intruder.wait(timeout=90) != 0
    assert "Failed to activate SuperNode" in (cluster.logs / "node-intruder.log").read_text()

    cluster.start_nodes(users, "--fast-poll", "0.2")
    out = cluster.root / "out"
    run_config = TINY_RUN | {
        "num-server-rounds": 3, "node-wait-timeout": 60.0, "round-timeout": 30.0,
        "output-dir": str(out),
    }  # fmt: skip
    run_log = cluster.logs / "flwr-run.log"
    run = cluster.flwr_run("flwr-run", run_config)
    # Kill one SuperNode (its whole process group, no goodbye) once round 1 is done.
    _wait_for(run_log, r"round 1/3", 200, run)
    cluster.kill("node-bert-text", signal.SIGKILL)
    assert run.wait(timeout=200) == 0, run_log.read_text()[-4000:]

    results = json.loads(sorted(out.glob("run-*/results.json"))[-1].read_text())
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert set(rounds[0]["replied"]) == set(users)
    # The killed node is named by its user once it has replied, else by its node id.
    killed = {"bert-text", f"node-{ids['bert-text']}"}
    missed = [r["round"] for r in rounds if "bert-text" not in r["replied"]]
    assert missed and missed == list(range(missed[0], 4)), rounds  # gone from then on
    assert missed[0] >= 2
    assert killed & set(rounds[missed[0] - 1]["failed"]), rounds  # recorded where missed
    for r in rounds:  # the others carry on, and get payloads from the partners left
        assert {"cnn-cls", "vit-multilabel"} <= set(r["replied"])
    assert all(rounds[-1]["downlink_bytes"][u] > 0 for u in ("cnn-cls", "vit-multilabel"))
    if missed[0] == 2:  # round 3's payloads come from 2 users: M_eff drops from 2 to 1 partner
        for u in ("cnn-cls", "vit-multilabel"):
            assert rounds[2]["downlink_bytes"][u] < rounds[1]["downlink_bytes"][u]


def _results(out: Path) -> dict[str, Any] | None:
    """The newest results.json under ``out``, or None while there is none."""
    found = sorted(out.glob("run-*/results.json"))
    return json.loads(found[-1].read_text()) if found else None


def _wait_rounds(out: Path, rounds: int, timeout: float, proc: subprocess.Popen) -> Path:
    """Wait until a run under ``out`` has recorded ``rounds`` rounds; its directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(json.JSONDecodeError):
            results = _results(out)
            if results is not None and len(results["rounds"]) >= rounds:
                return sorted(out.glob("run-*/results.json"))[-1].parent
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before round {rounds}"
        time.sleep(0.5)
    raise AssertionError(f"no {rounds} rounds under {out} within {timeout:.0f} s")


@needs_flower
@pytest.mark.timeout(600)
@pytest.mark.parametrize("warm", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_superlink_killed_and_restarted_run_resumes_where_it_stopped(cluster: Cluster, warm):
    users = ["cnn-cls", "vit-multilabel", "bert-text"]
    cluster.certs_and_keys(users)
    cluster.start_superlink()
    cluster.register(users)
    flags = ["--fast-poll", "0.2", "--warm" if warm else "--cold"]
    cluster.start_nodes(users, *flags)
    out = cluster.root / "out"
    run_config = TINY_RUN | {
        "num-server-rounds": 4, "node-wait-timeout": 90.0, "round-timeout": 180.0,
        "output-dir": str(out),
    }  # fmt: skip

    first = cluster.flwr_run("flwr-run-1", run_config)
    run_dir = _wait_rounds(out, 2, 300, first)
    # The SuperLink's host dies: the SuperLink and everything it started, no goodbye.
    cluster.kill("superlink", signal.SIGKILL)
    stop_processes(processes_using_home((cluster.root / "superlink" / "home").resolve()), grace=0)
    assert first.wait(timeout=120) != 0  # the operator's flwr run sees the run fail

    cluster.start_superlink()  # same database, same ports: the SuperNodes come back by themselves
    # The operator's one command: the run's own config, read from its results directory.
    second = cluster.launch(
        "flwr-run-2", "bash", str(DEPLOY / "resume-run.sh"), "--connection", "test", str(run_dir)
    )
    assert second.wait(timeout=400) == 0, (cluster.logs / "flwr-run-2.log").read_text()[-4000:]

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete"
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for r in rounds[2:]:  # every user took part after the restart, continuing its own state
        assert set(r["replied"]) == set(users), r
        for user in users:
            assert r["metrics"][user]["rounds-trained"] == r["round"], (user, r["round"])
    for user in users:  # one experiment's state per user, not one per Flower run
        experiments = list((cluster.root / "nodes" / user / "state").iterdir())
        assert len(experiments) == 1, experiments
    # SIGTERM stops a SuperNode and its warm worker within seconds; nothing outlives it.
    node = cluster.procs["node-cnn-cls"]
    started = time.monotonic()
    cluster.kill("node-cnn-cls", signal.SIGTERM)
    node.wait(timeout=30)
    assert time.monotonic() - started < 20
    assert processes_using_home((cluster.root / "nodes" / "cnn-cls" / "home").resolve()) == []


@needs_flower
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_supernode_killed_and_restarted_at_once_retries_rejoins_and_continues(cluster: Cluster):
    users = ["cnn-cls", "vit-multilabel", "bert-text"]
    cluster.certs_and_keys(users)
    cluster.start_superlink()
    cluster.register(users)
    ports = cluster.start_nodes(users, "--fast-poll", "0.2")
    out = cluster.root / "out"
    run_config = TINY_RUN | {
        "num-server-rounds": 12, "node-wait-timeout": 90.0, "round-timeout": 20.0,
        "output-dir": str(out),
    }  # fmt: skip
    run = cluster.flwr_run("flwr-run", run_config)
    _wait_rounds(out, 2, 300, run)
    cluster.kill("node-bert-text", signal.SIGKILL)  # no goodbye: the SuperLink counts it online
    cluster.procs["node-bert-text"].wait(timeout=10)
    first_log = cluster.logs / "node-bert-text.log"
    first_log.rename(cluster.logs / "node-bert-text-killed.log")
    restarted = cluster.start_node("bert-text", ports["bert-text"], "--fast-poll", "0.2")
    _wait_for(first_log, "SuperNode ID", 150, restarted)
    assert run.wait(timeout=400) == 0, (cluster.logs / "flwr-run.log").read_text()[-4000:]

    node_log = first_log.read_text()
    assert "refused to activate this node" in node_log  # it was refused at first, and waited
    rounds = json.loads(sorted(out.glob("run-*/results.json"))[-1].read_text())["rounds"]
    back = [r["round"] for r in rounds if "bert-text" in r["replied"]]
    missed = [r["round"] for r in rounds if "bert-text" not in r["replied"]]
    assert missed and back[-1] == 12, (back, missed)  # left out for a while, then back
    assert missed == list(range(missed[0], missed[-1] + 1))  # only while it was gone
    for r in rounds:  # the others never stopped
        assert {"cnn-cls", "vit-multilabel"} <= set(r["replied"])
    # It continued from its saved state: one more trained round each time it replied.
    trained = [r["metrics"]["bert-text"]["rounds-trained"] for r in rounds if r["round"] in back]
    assert trained[0] == 1 and trained == sorted(set(trained)), trained
    assert trained[-1] >= len(back), trained
    assert trained[back.index(missed[-1] + 1)] > 1  # the first round back did not start afresh
