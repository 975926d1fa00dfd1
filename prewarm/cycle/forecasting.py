"""Keeps a forecast engine fed and its latest forecasts, for whichever driver runs the cycle.

Owns: folding new history into a :class:`forecaster.types.ForecastEngine`, asking it for the
horizon and quantile levels the cycle plans with, and marking forecasts stale when the history
source is down. Must not: fetch history itself or read a clock (the driver hands in batches).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from common.ids import ModelId
from forecaster.types import Forecast, ForecastEngine, SeriesBatch


def forecast_levels(planning_quantile: float) -> tuple[float, ...]:
    """The quantile levels forecast for the cycle: p10 and p50 for people and dashboards, and the
    planning quantile the planner and the quality gate use."""
    return tuple(sorted({0.1, 0.5, planning_quantile}))


class ForecastFeed:
    """Forecasts ``horizon_s`` ahead on ``step_s`` steps at :func:`forecast_levels`."""

    def __init__(
        self,
        engine: ForecastEngine,
        *,
        step_s: float,
        horizon_s: float,
        planning_quantile: float,
    ) -> None:
        self._engine = engine
        self.horizon_steps = max(1, math.ceil(horizon_s / step_s))
        self.quantiles = forecast_levels(planning_quantile)
        self._forecasts: dict[ModelId, Forecast] = {}
        self._current = False

    def refresh(self, batch: SeriesBatch | None) -> Mapping[ModelId, Forecast]:
        """Fold ``batch`` (new complete steps, or None) in and return the forecasts. The engine
        forecasts again only when something new came in (its forecasts depend on nothing else)."""
        if batch is not None and batch.steps > 0:
            self._engine.observe(batch)
            self._current = False
        if not self._current:
            self._forecasts = dict(
                self._engine.forecast(horizon_steps=self.horizon_steps, quantiles=self.quantiles)
            )
            self._current = True
        return self._forecasts

    def mark_stale(self) -> Mapping[ModelId, Forecast]:
        """The history source is down: the last forecasts, each marked stale."""
        self._forecasts = {
            m: f if f.stale else replace(f, stale=True) for m, f in self._forecasts.items()
        }
        self._current = False
        return self._forecasts

    @property
    def forecasts(self) -> Mapping[ModelId, Forecast]:
        """The latest forecasts (stale ones marked)."""
        return self._forecasts
