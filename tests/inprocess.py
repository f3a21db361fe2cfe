"""An in-process Grid: the ServerApp's messages go straight to a ClientApp, no Ray, no gRPC.

Each node keeps its node config; every message gets a fresh Context (as a deployment's new
process per message would), so client state must come from disk. A ClientApp exception
becomes an error reply with Flower's code for it, as the real runtimes do.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, dict[str, Any]],
        run_config: dict[str, Any],
        *,
        run_id: int = 7,
        drop: Callable[[int, int], bool] | None = None,
    ) -> None:
        self.client_app = client_app
        self.node_configs = dict(node_configs)
        self.run_config = run_config
        self.run_id = run_id
        self.drop = drop  # (node, round) -> True: the node does not answer
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover - not used
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = msg.metadata.dst_node_id
            if self.drop is not None and self.drop(node, int(msg.metadata.group_id)):
                continue
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
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
