"""History sources: where per-model request counts come from (Prometheus, trace files).

Every source returns a :class:`forecaster.types.SeriesBatch` of per-step request counts on a regular
grid. This package does the I/O; the models in :mod:`forecaster.models` never import it.
"""

from __future__ import annotations

from typing import Protocol

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
