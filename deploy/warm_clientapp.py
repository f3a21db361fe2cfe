"""A warm ClientApp executor for a SuperNode started with ``--isolation process`` (Flower 1.39).

By default (``--isolation subprocess``) a SuperNode's SuperExec starts a new
``flwr-clientapp`` process for every message: Python, Flower, torch and the app are imported
again and the user's model and data are rebuilt and restored from disk, every round. With
``flower-supernode --isolation process`` the SuperNode runs no executor itself and waits for
one to connect to its Runtime API. This is such an executor that stays up: it acquires each
ClientApp task from the SuperNode's Runtime API and runs it the way ``flwr-clientapp`` does
(``flwr.supernode.runtime.run_clientapp``: pull input, install the FAB, load the ClientApp,
call it, push the reply and the task output, with a task heartbeat), but in this one process,
so imports and the ClientApp's own cache (``client_app/state.py`` keeps the built trainer
per process) survive between rounds.

A task of another app bundle (a new FAB hash) is handed to a fresh ``flwr-clientapp``
process, and then this worker re-executes itself, so code is never mixed across bundles.

    python deploy/warm_clientapp.py --runtime-api-address 127.0.0.1:9094 [--poll-interval 0.1]
                                    [--parent-pid SUPERNODE_PID]

Run one per SuperNode, on the SuperNode's host, with the SuperNode's --port. It reads only
the local Runtime API (plain HTTP on loopback, as Flower's own SuperExec does in the default
mode). It never hangs on a task whose run died (a SuperLink restart): each task's calls to
the Runtime API give up after ``--task-retry-seconds`` (Flower's own client retries without
end). SIGTERM or SIGINT stop it within ``--stop-grace`` seconds, also in the middle of a task
(the task is reported failed, the user's state stays that of its last finished round), and
with ``--parent-pid`` it stops when its SuperNode ends.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import flwr

# This worker runs tasks through Flower's internal modules, as flwr-clientapp 1.39 does:
# on another release they may differ without an error, so refuse to start.
if not flwr.__version__.startswith("1.39."):
    sys.exit(
        f"deploy/warm_clientapp.py is written for Flower 1.39 and found flwr {flwr.__version__}; "
        "start the SuperNode without --warm (deploy/start-supernode.sh) or install flwr 1.39"
    )

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import RetryInvoker, make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime import run_clientapp as flower_task
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

log = logging.getLogger("fedmuscle.warm-clientapp")

# Heavy third-party packages the FedMuscle ClientApp imports; importing them before the first
# task makes round 1 cheaper. The app's own modules are not preloaded: they come from the
# app bundle of each run.
DEFAULT_PRELOAD = ("torch", "torchvision", "timm", "transformers", "peft", "torchmetrics")

_stop = threading.Event()
_in_task = False


class Stopped(BaseException):
    """Raised in the task being run when a stop is asked for (not an ``Exception``)."""


def _stop_on_signal(grace: float) -> None:
    """SIGTERM / SIGINT: stop now (also mid-task); exit hard if not gone in ``grace`` s."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if _stop.is_set():
            return
        _stop.set()
        log.info("%s: stopping", signal.Signals(signum).name)
        deadline = threading.Timer(grace, os._exit, args=(128 + signum,))
        deadline.daemon = True  # a worker that stopped in time exits with its own status
        deadline.start()
        if _in_task:
            raise Stopped

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _retry_invoker(max_seconds: float | None) -> RetryInvoker:
    """Flower's HTTP retry policy, bounded in time and ended by a stop."""
    invoker = make_simple_http_retry_invoker()
    invoker.max_time = max_seconds
    flower_giveup = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        return _stop.is_set() or bool(flower_giveup and flower_giveup(exc))

    invoker.should_giveup = should_giveup
    return invoker


def _client(
    address: str, token: str | None = None, retry_seconds: float | None = None
) -> RuntimeHttpClient:
    interceptors: list = [
        RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")
    ]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=_retry_invoker(retry_seconds),
    )


class WarmExecutor:
    """Acquire ClientApp tasks from one SuperNode and run them in this process."""

    def __init__(self, address: str, task_retry_seconds: float = 60.0) -> None:
        self.address = address
        self.task_retry_seconds = task_retry_seconds
        # A task's message objects are pulled for up to 7,200 s by default: a task acquired
        # as the SuperLink died would hold the worker for two hours. Bound it too.
        pull = flower_task.pull_and_inflate_object_from_tree
        flower_task.pull_and_inflate_object_from_tree = functools.partial(  # type: ignore[assignment]
            getattr(pull, "func", pull), max_time=task_retry_seconds
        )
        self.fab_hash: str | None = None
        self.load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        self.tasks = 0

    def run_in_fresh_process(self, token: str) -> None:
        """Hand one task to Flower's own one-shot ``flwr-clientapp``."""
        exe = shutil.which("flwr-clientapp") or os.path.join(
            os.path.dirname(sys.executable), "flwr-clientapp"
        )
        cmd = [exe, "--insecure", "--runtime-api-address", self.address, "--token", token]
        subprocess.run(cmd, check=False)

    def run_task(self, token: str) -> None:
        """Run one ClientApp task as ``flwr-clientapp`` would, in this process."""
        global _in_task
        client = _client(self.address, token, self.task_retry_seconds)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        context: Context | None = None
        message: Message | None = None
        reply: Message | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        started = time.perf_counter()
        try:
            _in_task = True
            if _stop.is_set():
                raise Stopped
            message, context, run, fab = pull_task_input(client)
            if self.fab_hash is None:
                install_from_fab(fab.content, skip_prompt=True)
                self.fab_hash = fab.hash_str
            app: ClientApp = self.load(run.fab_id, run.fab_version, fab.hash_str)
            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = f"{type(err)}:<'{err}'>"
            if isinstance(err, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                reason = "An exception was raised when attempting to load `ClientApp`"
            log.exception("ClientApp raised an exception")
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        except Stopped:
            details = "the warm ClientApp executor was stopped during the task"
            log.warning(details)
        finally:
            _in_task = False
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:
                log.exception("failed to push the reply")
            try:
                push_task_output(client=client, context=context, sub_status=status, details=details)
            except Exception:  # the SuperNode or its run is gone: nothing to report to
                log.exception("failed to report the task's end")
            heartbeat.stop()
            client.close()
        self.tasks += 1
        log.info("task %d done in %.2f s (%s)", self.tasks, time.perf_counter() - started, status)

    def serve(self, poll_interval: float) -> int:
        """Poll the Runtime API for tasks until stopped; returns the exit status."""
        control = _client(self.address)
        log.info("warm ClientApp executor on %s (poll %.2f s)", self.address, poll_interval)
        try:
            while not _stop.is_set():
                try:
                    res = control.AcquireTask(
                        AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
                    )
                except Exception as err:  # the SuperNode is (re)starting: wait for it
                    log.warning("Runtime API not reachable (%s); retrying", err)
                    _stop.wait(1.0)
                    continue
                if not (res.HasField("task") and res.token):
                    _stop.wait(poll_interval)
                    continue
                task_hash = res.task.fab_hash if res.task.HasField("fab_hash") else None
                if self.fab_hash is not None and task_hash and task_hash != self.fab_hash:
                    log.info("a new app bundle: one fresh flwr-clientapp, then a restart")
                    self.run_in_fresh_process(res.token)
                    control.close()
                    os.execv(sys.executable, [sys.executable, *sys.argv])
                self.run_task(res.token)
        finally:
            control.close()
        return 0


def preload(modules: list[str]) -> None:
    """Import ``modules`` now (those not installed are skipped with a log line)."""
    start = time.perf_counter()
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
            done.append(name)
        except ImportError as err:
            log.info("not preloaded: %s (%s)", name, err)
    log.info("preloaded %s in %.1f s", ", ".join(done) or "nothing", time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runtime-api-address", required=True, help="the SuperNode's Runtime API (its --port)"
    )
    parser.add_argument("--poll-interval", type=float, default=0.1, help="seconds between polls")
    parser.add_argument(
        "--preload",
        default=",".join(DEFAULT_PRELOAD),
        help="comma-separated modules to import at start ('' for none)",
    )
    parser.add_argument("--parent-pid", type=int, help="exit when the SuperNode ends")
    parser.add_argument(
        "--task-retry-seconds",
        type=float,
        default=60.0,
        help="how long one task's calls to the Runtime API retry before the task fails",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=10.0,
        help="seconds from SIGTERM to a hard exit if the worker has not stopped by then",
    )
    args = parser.parse_args(argv)
    if not 0.01 <= args.poll_interval <= 60:
        parser.error("--poll-interval must be within [0.01, 60] seconds")
    if args.task_retry_seconds <= 0 or args.stop_grace <= 0:
        parser.error("--task-retry-seconds and --stop-grace must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    _stop_on_signal(args.stop_grace)
    if args.parent_pid is not None:  # raises SIGINT here when the SuperNode is gone
        start_parent_process_monitor(args.parent_pid)
    preload([m for m in args.preload.split(",") if m])
    executor = WarmExecutor(args.runtime_api_address, args.task_retry_seconds)
    try:
        return executor.serve(args.poll_interval)
    except Stopped:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
