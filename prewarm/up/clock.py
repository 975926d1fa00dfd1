"""The local stack's clock: the wall clock, or one running ``speed`` times faster from a start.

Owns: mapping wall time to the stack's time. Everything that reasons about time in the stack (the
daemon's ticks and forecasts, the control API's requests, the traffic's sample timestamps) reads
this one clock, so they agree with each other. It never runs behind the wall clock: the GPU agents
check Preload deadlines against their own (wall) clocks, and a deadline ahead of theirs is met.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StackClock:
    """``start_s`` at the moment :meth:`start` is called, then ``speed`` seconds per wall
    second. Before :meth:`start` it reads ``start_s``."""

    def __init__(
        self, start_s: float, *, speed: float = 1.0, wall: Callable[[], float] = time.time
    ) -> None:
        if speed < 1:
            raise ValueError(f"speed must be at least 1 (the agents' deadlines), got {speed}")
        self.start_s = start_s
        self.speed = speed
        self._wall = wall
        self._wall_start: float | None = None

    def start(self) -> None:
        """Start running (from ``start_s``, or from the wall clock if that is later)."""
        now = self._wall()
        self.start_s = max(self.start_s, now)
        self._wall_start = now

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._wall_start is not None

    def __call__(self) -> float:
        if self._wall_start is None:
            return self.start_s
        return self.start_s + self.speed * (self._wall() - self._wall_start)

    def wall_seconds(self, stack_seconds: float) -> float:
        """Wall seconds that ``stack_seconds`` of this clock take."""
        return stack_seconds / self.speed
