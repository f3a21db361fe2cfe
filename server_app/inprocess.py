"""Both apps in one process: the ServerApp's messages go straight to the ClientApp.

For sweeps and tests, where a real ``flwr run`` (Ray, a SuperLink, a process per node)
costs more than the training: :class:`InProcessGrid` is a Flower ``Grid`` that calls the
ClientApp directly, and :func:`run_inprocess` runs the same ServerApp ``main`` and
ClientApp handlers as ``flwr run`` does, one node per user of the federation.

    python -m server_app.inprocess --run-config 'algorithm="local" num-server-rounds=5'

Each node keeps its node config; every message gets a fresh Context and, unless
``keep_trainers``, the ClientApp's trainer cache is cleared first (as a deployment's new
process per message would), so client state comes from disk. A ClientApp exception
becomes an error reply with Flower's code for it, as the real runtimes do. This is the
one module of the apps that imports both: it exists to drive them together.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedmuscle_flwr.launch import parse_toml_overrides

__all__ = ["InProcessGrid", "main", "run_inprocess"]


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process (see the module docstring)."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, dict[str, Any]],
        run_config: dict[str, Any],
        *,
        run_id: int = 7,
        drop: Callable[[int, int], bool] | None = None,
        keep_trainers: bool = False,
    ) -> None:
        self.client_app = client_app
        self.node_configs = dict(node_configs)
        self.run_config = run_config
        self.run_id = run_id
        self.drop = drop  # (node, round) -> True: the node does not answer
        self.keep_trainers = keep_trainers  # True: one warm process (Ray actors, warm executor)
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used
        """Not used in process."""
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover - not used
        """Not used in process."""
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        """Not used in process."""
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        """The node ids given at construction."""
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to the ClientApp now; keep its reply for the pull."""
        from client_app.state import forget_trainers

        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = msg.metadata.dst_node_id
            if self.drop is not None and self.drop(node, int(msg.metadata.group_id)):
                continue
            if not self.keep_trainers:
                forget_trainers()  # a new process: the trainer is restored from disk
            context = Context(
                self.run_id, node, self.node_configs[node], RecordDict(), self.run_config
            )
            try:
                reply = self.client_app(msg, context)
            except Exception as err:
                reason = "".join(traceback.format_exception(err))
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` that exist (a dropped node has none)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull."""
        return self.pull_messages(self.push_messages(messages))


def run_inprocess(
    run_config: Mapping[str, Any],
    *,
    run_id: int = 1,
    attack: tuple[str, str] | None = None,
    keep_trainers: bool = False,
) -> Path:
    """Run the ServerApp over an in-process grid, one node per user; return results.json.

    ``run_config`` holds run-config keys (kebab-case) over the defaults. Client state goes
    to ``state-dir`` when given, else to a temporary directory removed afterwards.
    ``attack`` = (user id, kind): that user sends a lying Z (:mod:`client_app.attacks`).
    ``keep_trainers``: reuse each user's trainer between rounds instead of restoring it
    from disk (faster, the same results).
    """
    from flwr.supercore.task_identity import TaskIdentity

    from client_app.app import app as client_app
    from fedmuscle_flwr.config import RunConfig
    from fedmuscle_flwr.federation import load_federation
    from server_app.app import main as server_main
    from server_app.strategy import RunFailed

    config = dict(RunConfig.from_run_config(run_config).to_dict())
    users = load_federation(config["federation"]).users
    app = client_app
    if attack is not None:
        from client_app.attacks import lying_client_app

        if attack[0] not in {u.id for u in users}:
            raise ValueError(f"attack names user {attack[0]!r}, not in the federation")
        app = lying_client_app(client_app, liar=attack[0], attack=attack[1], seed=config["seed"])
    nodes = {1000 + i: {"partition-id": i, "num-partitions": len(users)} for i in range(len(users))}
    # Flower reads the running task's identity when a Message is built.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
    with tempfile.TemporaryDirectory(prefix="fedmuscle-state-") as scratch:
        if not config["state-dir"]:
            config["state-dir"] = scratch
        grid = InProcessGrid(app, nodes, config, run_id=run_id, keep_trainers=keep_trainers)
        with contextlib.suppress(RunFailed):  # results.json says so, as after a Flower run
            server_main(grid, Context(run_id, 0, {}, RecordDict(), config))
    return Path(config["output-dir"]).expanduser() / f"run-{run_id}" / "results.json"


def main(argv: list[str] | None = None) -> int:
    """Command line: one in-process run; prints the path of its results.json."""
    parser = argparse.ArgumentParser(prog="python -m server_app.inprocess", description=__doc__)
    parser.add_argument("--run-config", default="", help="TOML overrides: 'tau=0.2 seed=1'")
    parser.add_argument("--run-id", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--attack", default="", metavar="USER:KIND", help="a lying user")
    parser.add_argument(
        "--keep-trainers", action="store_true",
        help="reuse each user's trainer between rounds (no restore from disk; same results)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    attack = None
    if args.attack:
        user, _, kind = args.attack.partition(":")
        attack = (user, kind)
    overrides = parse_toml_overrides(args.run_config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    path = run_inprocess(
        overrides, run_id=args.run_id, attack=attack, keep_trainers=args.keep_trainers
    )
    status = json.loads(path.read_text()).get("status")
    print(f"results: {path} ({status})", flush=True)
    return 0 if status == "complete" else 1


if __name__ == "__main__":
    raise SystemExit(main())
