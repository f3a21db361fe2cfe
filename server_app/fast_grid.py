"""A Grid that waits for replies with a short poll interval.

Flower 1.39's deployment Grid (``HttpGrid``, the ServerApp's view of the SuperLink Runtime
API) sleeps a fixed 3 s between pulls in ``send_and_receive``: a reply that arrives just
after a pull waits up to 3 s more, every round. :class:`PollingGrid` delegates everything to
the wrapped Grid and only reimplements ``send_and_receive`` as push, then pull every
``poll_interval`` seconds until every reply is in or the timeout passes, with the same
result as Flower's loop. In simulation (``InMemoryGrid``) it changes nothing of substance.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["PollingGrid", "wrap_grid"]


class PollingGrid(Grid):
    """Delegate to ``grid``; pull replies every ``poll_interval`` seconds.

    Parameters
    ----------
    grid
        The Grid Flower handed to the ServerApp.
    poll_interval
        Seconds between two pulls while replies are missing (> 0).
    """

    def __init__(self, grid: Grid, poll_interval: float) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        self.inner = grid
        self.poll_interval = float(poll_interval)

    def set_run(self, run: Run) -> None:
        """Set the run of the wrapped Grid."""
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        """The run of the wrapped Grid."""
        return self.inner.run

    def create_message(  # noqa: D102 (the wrapped Grid's documentation applies)
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The connected nodes, from the wrapped Grid."""
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """The connected nodes' information, from the wrapped Grid."""
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push through the wrapped Grid."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull through the wrapped Grid."""
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``; pull every ``poll_interval`` s until all replied or timeout.

        As Flower's own loop: ``timeout=None`` waits for every reply, and the replies that
        arrived before the deadline are returned (missing ones are simply absent).
        """
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending:
                break
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(self.poll_interval, left))
            else:
                time.sleep(self.poll_interval)
        return replies

    def __getattr__(self, name: str) -> object:
        """Anything else (``close``, ``node``, ...) comes from the wrapped Grid."""
        if name == "inner":  # not set yet (e.g. during copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def wrap_grid(grid: Grid, poll_interval: float) -> Grid:
    """``grid`` polled every ``poll_interval`` s (not wrapped twice)."""
    if isinstance(grid, PollingGrid):
        grid.poll_interval = poll_interval
        return grid
    return PollingGrid(grid, poll_interval)
