"""Launch ``flwr run`` local simulations from Python, and clean up after them.

``flwr run`` on a local federation starts a detached ``flower-superlink --simulation``
(and its ``flwr-simulation`` child) that outlives the command. Every launch here uses its
own ``FLWR_HOME``, and afterwards stops exactly the processes whose environment names that
home, by PID: nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LaunchError",
    "exit_on_sigterm",
    "find_results",
    "free_port",
    "parse_toml_overrides",
    "processes_using_home",
    "run_simulation",
    "toml_overrides",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class LaunchError(RuntimeError):
    """``flwr run`` failed or produced no results."""


def parse_toml_overrides(text: str) -> dict[str, Any]:
    """``'a=1 b="x y"'`` -> ``{"a": 1, "b": "x y"}``: run-config overrides as the CLIs take them.

    Whitespace separates overrides except inside a TOML value: each override is the
    shortest run of whitespace-separated pieces that reads as TOML ``key=value``, so quoted
    strings keep their spaces and quotes decide the type (``s="1"`` is a string), as in
    ``flwr run --run-config``.

    Raises
    ------
    ValueError
        Naming the override that is not a TOML ``key=value``.
    """
    values: dict[str, Any] = {}
    start: int | None = None
    error: tomllib.TOMLDecodeError | None = None
    for piece in re.finditer(r"\S+", text):
        start = piece.start() if start is None else start
        try:
            values |= tomllib.loads(text[start : piece.end()])
        except tomllib.TOMLDecodeError as err:
            error = err  # a value with spaces: read on
            continue
        start = None
    if start is not None:
        raise ValueError(
            f"cannot read override {text[start:].strip()!r} as TOML key=value ({error})"
        )
    return values


def toml_overrides(values: Mapping[str, Any]) -> str:
    """``{"a": 1, "b": "x"}`` -> ``a=1 b="x"`` for ``flwr run --run-config``."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def processes_using_home(flwr_home: Path) -> list[int]:
    """PIDs of processes whose environment has ``FLWR_HOME=<flwr_home>`` (Linux /proc)."""
    marker = f"FLWR_HOME={flwr_home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def stop_processes(pids: list[int], *, grace: float = 10.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that a killed launcher still stops its SuperLink.

    For command-line entry points (it must run in the main thread).
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


_PORTS_GIVEN: set[int] = set()  # free_port's answers so far, in this process
_PORTS_LOCK = threading.Lock()


def _unbound_port() -> int:
    """A port the kernel offers for 127.0.0.1, released again at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not given out before here.

    The port is released before its user binds it, so the kernel may offer it again;
    remembering the ports handed out keeps two picks of this process apart (two ports of
    one launch, or launches side by side).

    Raises
    ------
    OSError
        When the kernel offers only ports given out already.
    """
    with _PORTS_LOCK:
        for _ in range(100):
            port = _unbound_port()
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                return port
    raise OSError("no TCP port on 127.0.0.1 that this process has not given out already")


def find_results(output_dir: Path) -> Path:
    """The single ``run-*/results.json`` under a launch's own output directory."""
    found = sorted(output_dir.glob("run-*/results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise LaunchError(f"no results.json under {output_dir}: the ServerApp did not finish")
    return found[-1]


def run_simulation(
    run_config: Mapping[str, Any],
    *,
    num_supernodes: int,
    output_dir: Path,
    app_dir: Path = PROJECT_ROOT,
    flwr_home: Path | None = None,
    timeout: float = 3600.0,
    quiet: bool = False,
) -> Path:
    """Run one ``flwr run --stream`` simulation; return the path of its results.json.

    ``output_dir`` must be a directory of this launch alone (the ServerApp writes
    ``run-<id>/`` inside it). The background SuperLink is stopped when the run ends, fails
    or times out.
    """
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    resumed = run_config.get("resume-from")
    home = Path(
        flwr_home
        or os.environ.get("FEDMUSCLE_FLWR_HOME")  # set by whoever must find this launch's processes
        or tempfile.mkdtemp(prefix="fedmuscle-flwr-home-")
    ).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # The SuperLink would otherwise `uv sync` the project into a fresh environment.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # Own ports for the local SuperLink, so that launches can run side by side.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    flwr = shutil.which("flwr", path=env["PATH"])
    if flwr is None:
        raise LaunchError("the `flwr` command is not installed: run scripts/setup.sh first")
    overrides = dict(run_config) | {"output-dir": str(output_dir)}
    cmd = [
        flwr, "run", str(app_dir), "--stream",
        "--federation-config", f"num-supernodes={num_supernodes}",
        "--run-config", toml_overrides(overrides),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd,
            env=env,
            timeout=timeout,
            check=False,
            stdout=subprocess.DEVNULL if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
        )
    except subprocess.TimeoutExpired as err:
        raise LaunchError(f"flwr run did not finish within {timeout:.0f} s") from err
    finally:
        stop_processes(processes_using_home(home))
    if done.returncode != 0:
        raise LaunchError(f"flwr run exited with {done.returncode}")
    if resumed:  # a resumed run writes into its own directory
        path = Path(str(resumed)) / "results.json"
        if not path.is_file():
            raise LaunchError(f"no results.json in {resumed}: the ServerApp did not finish")
        return path
    return find_results(output_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        return (Path("/proc") / str(pid) / "stat").read_text().split()[2] != "Z"
    except OSError:
        return False
