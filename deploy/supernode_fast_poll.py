"""``flower-supernode`` with a shorter idle poll (Flower 1.39; opt-in, see deploy/README.md).

Flower 1.39's SuperNode sleeps a hard-coded 3 s whenever a pull from the SuperLink brings no
message (``flwr/supernode/start_client_internal.py``), and 0.5 s between checks for the
ClientApp's reply; nothing configures either. This launcher caps every sleep of that one
module at ``POLL`` seconds and then runs the unchanged ``flower-supernode`` entry point:

    python deploy/supernode_fast_poll.py POLL [flower-supernode arguments...]

The cost is more Fleet API pulls (1/POLL per second per idle node instead of 1/3). Nothing
else changes; the version is checked, since this reaches into a module's globals.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class _CappedClock:
    """The ``time`` module, but ``sleep`` lasts at most ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def main() -> None:
    """Patch the SuperNode loop's sleeps, then run flower-supernode with the other arguments."""
    if len(sys.argv) < 2:
        sys.exit("usage: supernode_fast_poll.py POLL_SECONDS [flower-supernode arguments...]")
    try:
        cap = float(sys.argv[1])
    except ValueError:
        sys.exit(f"POLL_SECONDS must be a number, got {sys.argv[1]!r}")
    if not 0.01 <= cap <= 3:
        sys.exit("POLL_SECONDS must be within [0.01, 3]")
    import flwr
    import flwr.supernode.start_client_internal as loop

    if not flwr.__version__.startswith("1.39."):
        sys.exit(f"supernode_fast_poll.py is written for flwr 1.39, found {flwr.__version__}")
    if getattr(loop, "time", None) is not time:
        sys.exit("flwr.supernode.start_client_internal no longer uses `time`: patch not applied")
    loop.time = _CappedClock(cap)  # type: ignore[assignment]

    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *sys.argv[2:]]
    flower_supernode()


if __name__ == "__main__":
    main()
