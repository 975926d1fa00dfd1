"""A traffic generator: a trace replayed as a live request counter in Prometheus.

Owns: splitting a trace at the replay's first step into *history* (backfilled into Prometheus
before it starts: the forecaster has days of it at once) and *live* traffic; the live counter
``inference_requests_total{model=...}`` at any moment of the stack's clock (each step's requests
spread evenly over the step, continuing the history's cumulative count, so ``rate()`` never sees a
reset), as the samples one push sends (:mod:`prewarm.up.remote_write`).

Each sample carries the stack's clock as its timestamp: with ``--speed`` above 1 that clock runs
ahead of the wall clock, and the daemon, which asks Prometheus for the steps up to *its* clock,
then reads exactly the requests the trace had in them. Past the trace's end the last day repeats.
Must not: invent traffic the trace does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.errors import InvalidInput
from forecaster.types import SeriesBatch
from prewarm.up.prometheus import METRIC
from prewarm.up.remote_write import Sample

DAY_S = 86400.0


@dataclass(frozen=True)
class Replay:
    """A trace moved ``shift_s`` later, replayed live from its step ``first_live``.

    ``history`` is the trace's steps before ``first_live`` (shifted), :attr:`start_s` the moment
    the live part starts on the stack's clock.
    """

    trace: SeriesBatch
    first_live: int
    shift_s: float

    @property
    def start_s(self) -> float:
        """Where history ends and live traffic starts, on the stack's clock."""
        return self.trace.start_s + self.first_live * self.trace.step_s + self.shift_s

    @property
    def history(self) -> SeriesBatch:
        """The steps before the live part, on the stack's clock."""
        return SeriesBatch(
            models=self.trace.models,
            start_s=self.trace.start_s + self.shift_s,
            step_s=self.trace.step_s,
            counts=np.ascontiguousarray(self.trace.counts[:, : self.first_live]),
        )

    def trace_time(self, now_s: float) -> float:
        """The trace's own time at ``now_s`` of the stack's clock."""
        return now_s - self.shift_s

    def _step_counts(self, step: int) -> np.ndarray:
        """Every model's count in live step ``step`` (absolute index; past the end, the
        trace's last day again)."""
        steps = self.trace.steps
        if step >= steps:
            period = min(steps, max(1, round(DAY_S / self.trace.step_s)))
            step = steps - period + (step - steps) % period
        return np.asarray(np.nan_to_num(self.trace.counts[:, step]), dtype=np.float64)

    def cumulative(self, now_s: float) -> np.ndarray:
        """Every model's counter at ``now_s``: the history's total plus the live requests up to
        ``now_s`` (steps spread evenly)."""
        counts = np.nan_to_num(self.trace.counts)
        total = np.asarray(counts[:, : self.first_live].sum(axis=1), dtype=np.float64)
        if now_s <= self.start_s:
            return total
        elapsed = (now_s - self.start_s) / self.trace.step_s
        whole = math.floor(elapsed)
        end = self.first_live + whole
        inside = min(end, self.trace.steps)
        total = total + counts[:, self.first_live : inside].sum(axis=1)
        for step in range(max(inside, self.first_live), end):
            total = total + self._step_counts(step)
        return np.asarray(total + self._step_counts(end) * (elapsed - whole), dtype=np.float64)

    def history_totals(self) -> np.ndarray:
        """Every model's counter where history ends."""
        return np.asarray(np.nan_to_num(self.trace.counts[:, : self.first_live]).sum(axis=1))


def plan_replay(trace: SeriesBatch, *, first_live: int, now_s: float) -> Replay:
    """The replay of ``trace`` whose live part starts at its step ``first_live`` on the next
    whole step of the clock after ``now_s`` (steps stay aligned to multiples of the step, as the
    Prometheus source's queries are). :class:`InvalidInput` when there is no history before it."""
    if not 0 < first_live < trace.steps:
        raise InvalidInput(
            f"the replay must start inside the trace after some history (step 1 to "
            f"{trace.steps - 1}), got {first_live}"
        )
    step = trace.step_s
    live_start = (math.floor(now_s / step) + 1) * step
    trace_live = trace.start_s + first_live * step
    # A whole number of steps, so the trace's buckets fall on the clock's step boundaries.
    shift = round((live_start - trace_live) / step) * step
    return Replay(trace=trace, first_live=first_live, shift_s=float(shift))


def traffic_samples(replay: Replay, now_s: float) -> list[Sample]:
    """Every model's live counter at ``now_s``, stamped ``now_s``: what one push sends."""
    values = replay.cumulative(now_s)
    return [
        Sample({"__name__": METRIC, "model": str(model)}, float(value), now_s)
        for model, value in zip(replay.trace.models, values, strict=True)
    ]
