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

Run one per SuperNode, on the SuperNode's host, with the SuperNode's --port. Stop it with
SIGTERM. It reads only the local Runtime API (plain HTTP on loopback, as Flower's own
SuperExec does in the default mode).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
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
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

log = logging.getLogger("fedmuscle.warm-clientapp")

# Heavy third-party packages the FedMuscle ClientApp imports; importing them before the first
# task makes round 1 cheaper. The app's own modules are not preloaded: they come from the
# app bundle of each run.
DEFAULT_PRELOAD = ("torch", "torchvision", "timm", "transformers", "peft", "torchmetrics")

_stop = False


def _request_stop(_signum: int, _frame: FrameType | None) -> None:
    global _stop
    _stop = True


def _client(address: str, token: str | None = None) -> RuntimeHttpClient:
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
        retry_invoker=make_simple_http_retry_invoker(),
    )


class WarmExecutor:
    """Acquire ClientApp tasks from one SuperNode and run them in this process."""

    def __init__(self, address: str) -> None:
        self.address = address
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
        client = _client(self.address, token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        context: Context | None = None
        message: Message | None = None
        reply: Message | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        started = time.perf_counter()
        try:
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
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:
                log.exception("failed to push the reply")
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()
        self.tasks += 1
        log.info("task %d done in %.2f s (%s)", self.tasks, time.perf_counter() - started, status)

    def serve(self, poll_interval: float) -> int:
        """Poll the Runtime API for tasks until stopped; returns the exit status."""
        control = _client(self.address)
        log.info("warm ClientApp executor on %s (poll %.2f s)", self.address, poll_interval)
        try:
            while not _stop:
                try:
                    res = control.AcquireTask(
                        AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
                    )
                except Exception as err:  # the SuperNode is (re)starting: wait for it
                    log.warning("Runtime API not reachable (%s); retrying", err)
                    time.sleep(1.0)
                    continue
                if not (res.HasField("task") and res.token):
                    time.sleep(poll_interval)
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
    args = parser.parse_args(argv)
    if not 0.01 <= args.poll_interval <= 60:
        parser.error("--poll-interval must be within [0.01, 60] seconds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    preload([m for m in args.preload.split(",") if m])
    return WarmExecutor(args.runtime_api_address).serve(args.poll_interval)


if __name__ == "__main__":
    raise SystemExit(main())
