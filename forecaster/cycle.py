"""One forecasting cycle: poll the history source, fold it in, forecast; degrade, never crash.

Owns: the rule for a failed source. When the poll raises :class:`TemporaryError` the cycle is
skipped: the engine keeps its state and the last good forecasts are returned marked ``stale``.
Must not: retry itself (the source already did, with backoff) or swallow any other error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.errors import TemporaryError
from common.ids import ModelId
from forecaster.engine import AutoForecaster
from forecaster.types import Forecast, SeriesBatch


class PollingSource(Protocol):
    """A source that returns the steps completed since its last successful poll."""

    def poll(self, *, now_s: float) -> SeriesBatch:
        """New history up to ``now_s``; raises :class:`TemporaryError` when unavailable."""
        ...


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle produced: forecasts (fresh, or the last good ones marked stale)."""

    forecasts: dict[ModelId, Forecast]
    stale: bool
    error: str | None = None


def run_cycle(
    source: PollingSource,
    engine: AutoForecaster,
    *,
    now_s: float,
    horizon_steps: int,
    quantiles: tuple[float, ...],
) -> CycleResult:
    """Poll ``source`` at ``now_s``, fold the new steps into ``engine`` and forecast."""
    try:
        batch = source.poll(now_s=now_s)
    except TemporaryError as error:
        return CycleResult(
            forecasts=engine.last_forecasts(stale=True), stale=True, error=str(error)
        )
    if batch.steps and batch.models:
        engine.observe(batch)
    forecasts = engine.forecast(horizon_steps=horizon_steps, quantiles=quantiles)
    return CycleResult(forecasts=forecasts, stale=False)
