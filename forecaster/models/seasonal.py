"""Multi-seasonal "seasonal delta" point model (daily and weekly cycles), vectorised.

Forecast = the recent level + how the series moved, in earlier seasons, from the same point in the
cycle to the forecast step: ``L_t + median_d(S_{t+k-d} - L_{t-d})`` over lags ``d`` (1-3 days
and/or 1-2 weeks), where ``S`` is a centred moving mean (``radius`` steps) and ``L`` the mean of
the last ``level_window`` steps. The median over lags keeps one odd cycle (a collection gap that
reads zero, an event) from steering the forecast; the multiplicative form's ratio is also clipped
to ``[1/MAX_RATIO, MAX_RATIO]``. It keeps the level adaptive (what matters at short horizons)
while taking the shape of the daily and weekly cycles from history. Must not: do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forecaster.models.base import HistoryView, nanmean, nanmedian
from forecaster.models.naive import recent_level
from forecaster.types import FloatArray

MAX_RATIO = 3.0


LagKey = tuple[int, int, int, int, int]
LagCache = dict[LagKey, tuple[FloatArray, FloatArray]]
"""Per-call memo of ``(shape, then)`` per ``(end, horizon, lag, radius, level_window)``."""


def _lag_parts(
    history: HistoryView,
    end: int,
    horizon: int,
    lag: int,
    radius: int,
    level_window: int,
    cache: LagCache | None,
) -> tuple[FloatArray, FloatArray]:
    key = (end, horizon, lag, radius, level_window)
    if cache is not None and key in cache:
        return cache[key]
    steps = np.arange(horizon, dtype=np.int64)
    around = np.arange(-radius, radius + 1, dtype=np.int64)
    back = np.arange(-level_window, 0, dtype=np.int64)
    future = history.gather((steps[:, None] - lag + around[None, :]).ravel(), end=end)
    shape = nanmean(future.reshape(history.size, horizon, around.size), axis=2)
    then = nanmean(history.gather(back - lag, end=end), axis=1)
    if cache is not None:
        cache[key] = (shape, then)
    return shape, then


def seasonal_delta(
    history: HistoryView,
    end: int,
    horizon: int,
    *,
    lags: Sequence[int],
    radius: int,
    level_window: int,
    multiplicative: bool = False,
    cache: LagCache | None = None,
) -> FloatArray:
    """Level plus the median seasonal change at ``lags``; additive, or a ratio when
    multiplicative. ``cache`` (a dict kept for one origin) shares the lag lookups between the
    variants evaluated at the same origin."""
    now = recent_level(history, end, level_window)
    changes = []
    for lag in lags:
        shape, then = _lag_parts(history, end, horizon, lag, radius, level_window, cache)
        if multiplicative:
            # Ratios of small counts explode; a pseudo-count of 1 keeps them bounded.
            changes.append((shape + 1.0) / (then[:, None] + 1.0))
        else:
            changes.append(shape - then[:, None])
    change = nanmedian(np.stack(changes), axis=0)
    if multiplicative:
        change = np.clip(np.where(np.isfinite(change), change, 1.0), 1 / MAX_RATIO, MAX_RATIO)
        out = (now[:, None] + 1.0) * change - 1.0
    else:
        out = now[:, None] + np.where(np.isfinite(change), change, 0.0)
    result: FloatArray = np.maximum(out, 0.0)
    return result
