"""Level and seasonal-naive point models (vectorised across series).

- ``level``: the mean of the last ``window`` observed steps, held flat (``window=1`` is naive).
- ``seasonal_naive``: the value one season (``lag`` steps) earlier; for steps beyond one lag the
  season repeats. Missing values fall back to the recent level.
Must not: do I/O.
"""

from __future__ import annotations

import numpy as np

from forecaster.models.base import HistoryView, IntArray, fill_nan, nanmean, nanmedian
from forecaster.types import FloatArray


def recent_level(history: HistoryView, end: int, window: int) -> FloatArray:
    """Mean of the last ``window`` steps per series; falls back to older data (up to 8x), then 0."""
    values = history.gather(np.arange(-window, 0, dtype=np.int64), end=end)
    level = nanmean(values, axis=1)
    missing = ~np.isfinite(level)
    if missing.any():
        wider = history.gather(np.arange(-8 * window, -window, dtype=np.int64), end=end)
        level = np.where(missing, nanmean(wider, axis=1), level)
    out: FloatArray = np.where(np.isfinite(level), level, 0.0)
    return out


def level(history: HistoryView, end: int, horizon: int, *, window: int) -> FloatArray:
    """The recent level held flat over the horizon."""
    value = recent_level(history, end, window)
    return np.repeat(value[:, None], horizon, axis=1)


def median_level(history: HistoryView, end: int, horizon: int, *, window: int) -> FloatArray:
    """The median of the last ``window`` observed steps, held flat: a naive forecast that one
    odd step (a dip from a failed scrape, a one-minute burst) does not throw off."""
    values = history.gather(np.arange(-window, 0, dtype=np.int64), end=end)
    median = nanmedian(values, axis=1)
    median = np.where(np.isfinite(median), median, recent_level(history, end, window))
    return np.repeat(median[:, None], horizon, axis=1)


def smoothed_level(
    history: HistoryView, end: int, horizon: int, *, alpha: float, robust: bool = False
) -> FloatArray:
    """Simple exponential smoothing's level (weight ``alpha`` on the newest step), held flat.

    Computed from a window long enough for the weights to decay below 1%, at most 720 steps (no
    state is kept, so it can be evaluated at any past origin); missing steps are skipped and the
    weights renormalised over the window. ``robust`` first clips each value to the window's
    median +- 3 scaled MADs (robust exponential smoothing): a one-step dip or spike does not move
    a fast level, a lasting change does, once it is the window's median.
    """
    length = max(2, min(720, int(np.ceil(np.log(0.01) / np.log(1.0 - alpha)))))
    values = history.gather(np.arange(-length, 0, dtype=np.int64), end=end)
    if robust:
        length = max(length, 5)
        values = history.gather(np.arange(-length, 0, dtype=np.int64), end=end)
        center = nanmedian(values, axis=1)[:, None]
        spread = 1.4826 * nanmedian(np.abs(values - center), axis=1)[:, None]
        bound = 3.0 * np.maximum(spread, 1.0)
        values = np.clip(values, center - bound, center + bound)
    weights = alpha * (1.0 - alpha) ** np.arange(length - 1, -1, -1, dtype=np.float64)
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0) @ weights
    mass = finite @ weights
    fallback = recent_level(history, end, 1)
    level_ = np.where(mass > 0, total / np.maximum(mass, 1e-12), fallback)
    return np.repeat(level_[:, None], horizon, axis=1)


def seasonal_offsets(horizon: int, lag: int) -> IntArray:
    """Offsets (relative to the end) of the values a seasonal-naive forecast repeats."""
    steps = np.arange(horizon, dtype=np.int64)
    return steps - lag * ((steps // lag) + 1)


def seasonal_naive(
    history: HistoryView, end: int, horizon: int, *, lag: int, fallback_window: int = 1
) -> FloatArray:
    """The value ``lag`` steps earlier (repeated for horizons beyond one lag)."""
    values = history.gather(seasonal_offsets(horizon, lag), end=end)
    return np.maximum(fill_nan(values, recent_level(history, end, fallback_window)), 0.0)
