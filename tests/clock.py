"""A fake clock for code that waits: time moves only when that code sleeps."""

from __future__ import annotations


class FakeClock:
    """Stands in for a module's ``time``: ``monotonic`` and ``perf_counter`` read a clock
    that only ``sleep`` moves; ``sleeps`` lists every sleep asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The fake time."""
        return self.now

    def perf_counter(self) -> float:
        """The fake time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Move the clock on by ``seconds`` at once."""
        self.sleeps.append(seconds)
        self.now += seconds
