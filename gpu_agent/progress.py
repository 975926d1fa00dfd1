"""Progress of one preload: the ``PreloadProgress`` messages and a throttled per-stage byte count.

Owns how progress is measured (bytes done of bytes total, GB/s over the stage, seconds since the
request) and how often worker threads may report it (every ``PROGRESS_INTERVAL_S`` at most). It
must not decide anything about the load or deliver messages itself: callers pass ``emit``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from common.ids import ModelId
from common.tiers import Tier
from protos import gpu_agent_pb2 as pb
from protos.tiers import agent_tier

PROGRESS_INTERVAL_S = 0.05
Stage = pb.PreloadProgress.Stage
Emit = Callable[[pb.PreloadProgress], None]


class LoadProgress:
    """The progress messages of one preload of ``model_id``, timed from ``started``."""

    def __init__(
        self, model_id: ModelId, *, started: float, monotonic: Callable[[], float]
    ) -> None:
        self.model_id = model_id
        self.started = started
        self._mono = monotonic

    def now(self) -> float:
        """The monotonic clock progress is timed with."""
        return self._mono()

    def message(
        self,
        stage: int,
        *,
        done: int = 0,
        total: int = 0,
        stage_started: float | None = None,
        tier: Tier | None = None,
        message: str = "",
    ) -> pb.PreloadProgress:
        """One progress message; GB/s is over the stage (from ``stage_started``) when given."""
        now = self._mono()
        span = now - (stage_started if stage_started is not None else self.started)
        return pb.PreloadProgress(
            model_id=self.model_id,
            stage=stage,  # type: ignore[arg-type]
            bytes_done=done,
            bytes_total=total,
            gbps=done / span / 1e9 if span > 0 and done else 0.0,
            tier=agent_tier(tier),
            message=message,
            elapsed_s=now - self.started,
        )

    def stage(self, stage: int, *, total: int, emit: Emit) -> StageReporter:
        """A byte counter for one stage of ``total`` bytes, starting now."""
        return StageReporter(self, stage, total=total, emit=emit, started=self._mono())


class StageReporter:
    """Counts bytes of one stage from worker threads and emits throttled progress."""

    def __init__(
        self, progress: LoadProgress, stage: int, *, total: int, emit: Emit, started: float
    ) -> None:
        self._progress = progress
        self._stage = stage
        self._total = total
        self._emit = emit
        self._stage_started = started
        self._done = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` more; emits unless the last message was under the interval ago."""
        with self._lock:
            self._done += nbytes
            now = self._progress.now()
            if now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
            done = self._done
        self._send(done)

    def finish(self, *, tier: Tier = Tier.DISK) -> None:
        """Emit the stage's final count: the model now lies in ``tier``."""
        self._send(self._done, tier=tier)

    def _send(self, done: int, *, tier: Tier | None = None) -> None:
        self._emit(
            self._progress.message(
                self._stage,
                done=done,
                total=max(self._total, done),
                stage_started=self._stage_started,
                tier=tier,
            )
        )
