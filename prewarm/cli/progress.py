"""Plain-text progress for long CLI runs (logs and pipes, where a rich bar prints escape codes).

Owns: :class:`PlainProgress`, a ``progress(task, fraction)`` callback that writes throttled lines
with an ETA. Must not: import the CLI's commands (they import it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from common.durations import format_duration

PLAIN_EVERY_S = 10.0
"""Seconds between two plain progress lines of one task (and before the first)."""


class PlainProgress:
    """Progress as plain lines (``backtest: prewarm 40% after 12s, about 18s left``) on ``stream``:
    for logs and pipes, where a bar would print escape codes. ``clock`` is injectable (tests)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        every_s: float = PLAIN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._every_s = every_s
        self._clock = clock
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def __call__(self, task: str, fraction: float) -> None:
        now = self._clock()
        started = self._started.setdefault(task, now)
        last = self._last.get(task, started)
        if now - last < self._every_s or fraction <= 0:
            return
        self._last[task] = now
        elapsed = now - started
        left = elapsed * (1.0 - fraction) / fraction
        done = "done" if fraction >= 1.0 else f"about {format_duration(left)} left"
        self._stream.write(
            f"backtest: {task} {fraction:.0%} after {format_duration(elapsed)}, {done}\n"
        )
        self._stream.flush()
