"""Cancellation and deadlines for one load, shared between the event loop and worker threads.

Owns :class:`LoadControl`, which the copy loops poll between chunks. It must not do I/O itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from common.errors import DeadlineExceeded, FailedPrecondition


class LoadCancelled(FailedPrecondition):
    """The load was cancelled (evicted while loading, client gone, agent stopping)."""


class LoadControl:
    """Tells a running load to stop: :meth:`checkpoint` raises once cancelled or past deadline.

    ``deadline`` is a value of ``clock`` (monotonic seconds); ``None`` means no deadline.
    """

    def __init__(
        self,
        deadline: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deadline = deadline
        self._clock = clock
        self._cancelled = threading.Event()
        self._reason = ""

    def cancel(self, reason: str) -> None:
        """Ask the load to stop at its next checkpoint."""
        self._reason = reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def checkpoint(self) -> None:
        """Raise :class:`LoadCancelled` or :class:`DeadlineExceeded` if the load must stop."""
        if self._cancelled.is_set():
            raise LoadCancelled(self._reason or "load cancelled")
        if self._deadline is not None and self._clock() > self._deadline:
            raise DeadlineExceeded("the preload's deadline passed before it finished")
