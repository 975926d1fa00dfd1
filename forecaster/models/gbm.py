"""Gradient-boosted quantile regression on lag and calendar features (scikit-learn), global model.

One ``HistGradientBoostingRegressor`` with the quantile loss is trained across all series (pooled,
each scaled by its own recent level, so one model serves thousands of series) on rows
``(series, origin, step ahead)`` from rolling origins in recent history. Features: steps ahead,
recent levels (last step, 5, 15 and 60 step means), the daily and weekly seasonal change from the
same point in earlier cycles, share of active steps, and the calendar (hour of day, day of week) of
the target step. Missing features are NaN, which the model handles natively, so short histories
work. Prediction is vectorised over all series and steps. Must not: do I/O.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from forecaster.models.base import HistoryView, RowSubset, nanmean
from forecaster.models.naive import recent_level, smoothed_level
from forecaster.types import FloatArray

FEATURES = (
    "ahead",
    "last",
    "mean5",
    "mean15",
    "mean60",
    "delta_day",
    "delta_week",
    "active",
    "hour_sin",
    "hour_cos",
    "weekday",
)


@dataclass(frozen=True, slots=True)
class Calendar:
    """What turns a step index into wall time: ``time = origin_s + step * step_s``."""

    origin_s: float
    step_s: float


def features(
    history: HistoryView, end: int, horizon: int, calendar: Calendar
) -> tuple[FloatArray, FloatArray]:
    """Feature rows ``(models * horizon, len(FEATURES))`` and per-series scales ``(models,)``.

    Rows are series-major (series 0 steps 0..h-1, then series 1, ...).
    """
    n = history.size
    step_s = calendar.step_s
    scale = smoothed_level(history, end, 1, alpha=min(0.9, step_s / 3600.0))[:, 0] + 1.0
    day = round(86400.0 / step_s)
    week = 7 * day
    ahead = np.arange(horizon, dtype=np.int64)
    recent = history.gather(np.arange(-60, 0, dtype=np.int64), end=end)
    last = recent[:, -1]
    mean5 = nanmean(recent[:, -5:], axis=1)
    mean15 = nanmean(recent[:, -15:], axis=1)
    mean60 = nanmean(recent, axis=1)
    active = nanmean((recent > 0).astype(np.float64) + 0 * recent, axis=1)

    def seasonal_change(lag: int) -> FloatArray:
        future = history.gather(ahead - lag, end=end)  # (n, horizon)
        then = nanmean(history.gather(np.arange(-5, 0, dtype=np.int64) - lag, end=end), axis=1)
        out: FloatArray = future - then[:, None]
        return out

    delta_day = seasonal_change(day) if day > horizon else np.full((n, horizon), np.nan)
    delta_week = seasonal_change(week) if week > horizon else np.full((n, horizon), np.nan)
    target_time = calendar.origin_s + (end + ahead) * step_s
    hour = (target_time % 86400.0) / 3600.0
    weekday = ((target_time // 86400.0) + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    columns = [
        np.broadcast_to(ahead[None, :] / max(1, horizon), (n, horizon)),
        np.broadcast_to((last / scale)[:, None], (n, horizon)),
        np.broadcast_to((mean5 / scale)[:, None], (n, horizon)),
        np.broadcast_to((mean15 / scale)[:, None], (n, horizon)),
        np.broadcast_to((mean60 / scale)[:, None], (n, horizon)),
        delta_day / scale[:, None],
        delta_week / scale[:, None],
        np.broadcast_to(active[:, None], (n, horizon)),
        np.broadcast_to(np.sin(2 * np.pi * hour / 24)[None, :], (n, horizon)),
        np.broadcast_to(np.cos(2 * np.pi * hour / 24)[None, :], (n, horizon)),
        np.broadcast_to(weekday[None, :], (n, horizon)),
    ]
    matrix = np.stack(columns, axis=2).reshape(n * horizon, len(FEATURES))
    return matrix.astype(np.float64), scale


class GradientBoostedQuantile:
    """A pooled quantile GBM over all series; unfitted, it predicts the recent level."""

    def __init__(self, *, quantile: float = 0.5, max_rows: int = 40_000, seed: int = 0) -> None:
        self.quantile = quantile
        self.max_rows = max_rows
        self.seed = seed
        self._model: object | None = None
        self.calendar: Calendar | None = None

    @property
    def fitted(self) -> bool:
        """Whether a model has been trained."""
        return self._model is not None

    def fit(
        self, history: HistoryView, origins: list[int], horizon: int, calendar: Calendar
    ) -> None:
        """Train on rows from ``origins`` (targets: the actual counts after each origin)."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        rng = np.random.default_rng(self.seed)
        n = history.size
        per_origin = max(1, self.max_rows // max(1, len(origins)))
        blocks_x = []
        blocks_y = []
        for origin in origins:
            actual = history.gather(np.arange(horizon, dtype=np.int64), end=origin + horizon)
            # The sample is drawn from the observed targets (a scale is finite and >= 1, so a
            # target is finite exactly where its actual is), and features are computed for the
            # sampled series only: at 100,000 series an origin keeps under 1 % of them.
            keep = np.flatnonzero(np.isfinite(actual.reshape(-1)))
            if keep.size > per_origin:
                keep = rng.choice(keep, per_origin, replace=False)
            if keep.size == 0:
                continue
            series, where = np.unique(keep // horizon, return_inverse=True)
            x, scale = features(RowSubset(history, series), origin, horizon, calendar)
            rows = where * horizon + keep % horizon
            blocks_x.append(x[rows])
            blocks_y.append(actual.reshape(-1)[keep] / scale[where])
        if not blocks_x or sum(block.size for block in blocks_y) < 50 or n == 0:
            return
        model = HistGradientBoostingRegressor(
            loss="quantile",
            quantile=self.quantile,
            max_iter=80,
            max_leaf_nodes=15,
            learning_rate=0.1,
            random_state=self.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(np.concatenate(blocks_x), np.concatenate(blocks_y))
        self._model = model
        self.calendar = calendar

    def predict(self, history: HistoryView, end: int, horizon: int) -> FloatArray:
        """Point forecasts ``(models, horizon)``; the recent level when not fitted."""
        if self._model is None or self.calendar is None:
            level = recent_level(history, end, 5)
            return np.repeat(level[:, None], horizon, axis=1)
        x, scale = features(history, end, horizon, self.calendar)
        predicted = np.asarray(self._model.predict(x))  # type: ignore[attr-defined]
        out: FloatArray = np.maximum(predicted.reshape(history.size, horizon) * scale[:, None], 0.0)
        return out
