"""The ServerApp's one logger, ``fedmuscle.server``: progress lines and warnings, once each.

Its records go to one handler, on standard output, and stop there (no propagation), so a
line shows once whatever else configured logging (Flower, Ray, the user). Flower shows a
ServerApp's standard output in the ``flwr run`` log stream; it swaps ``sys.stdout`` to
capture it, so the handler writes to the ``sys.stdout`` of the moment. To send the lines
elsewhere, add a handler to this logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

__all__ = ["LOGGER_NAME", "server_logger"]

LOGGER_NAME = "fedmuscle.server"


class _Stdout(logging.StreamHandler):
    """A stream handler on whatever ``sys.stdout`` is when a record is written."""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stdout


def server_logger() -> logging.Logger:
    """The ServerApp's logger, at INFO, with its one console handler (added once)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
