"""History sources: where per-model request counts come from (Prometheus, trace files).

Every source returns a :class:`forecaster.types.SeriesBatch` of per-step request counts on a regular
grid. This package does the I/O; the models in :mod:`forecaster.models` never import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from common.ids import ModelId
from forecaster.types import SeriesBatch


class PollingSource(Protocol):
    """A live source that returns the steps completed since its last successful poll.

    A failed poll raises :class:`common.errors.TemporaryError` after the source's own retries and
    does not advance its position, so the next poll asks for those steps again. The caller then
    skips the cycle: it keeps the engine's state and serves the last good forecasts marked stale
    (``AutoForecaster.last_forecasts``); it does not retry the poll itself.
    """

    def poll(self, *, now_s: float) -> SeriesBatch:
        """New history up to ``now_s``; raises :class:`TemporaryError` when unavailable."""
        ...


@dataclass(frozen=True, slots=True)
class SourceIssue:
    """A scoped failure of one query in a poll that otherwise succeeded (the rest went on).

    ``kind`` is the error class name the daemon counts in ``prewarm_history_errors_total``.
    """

    kind: str
    query: str
    message: str


@dataclass(frozen=True, slots=True)
class SourceReport:
    """What the latest successful poll found besides the counts.

    ``history_s``: per model, how much history the source holds for it (from its oldest present
    sample to the poll's end, at most the window). ``available_s``: the same over all models, the
    depth of the server's retention as seen from here (None before any sample); when it is shorter
    than ``window_s``, forecasts are made from what exists.
    """

    window_s: float
    step_s: float
    available_s: float | None
    history_s: Mapping[ModelId, float]
    issues: tuple[SourceIssue, ...]

    @property
    def short(self) -> bool:
        """Whether less history than the configured window exists (by more than two steps: the
        first step of a range has no ``rate`` when its earlier sample is out of range)."""
        return self.available_s is not None and self.available_s < self.window_s - 2 * self.step_s
