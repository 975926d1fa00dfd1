"""Forecast accuracy metrics used by backtests: MASE, scaled pinball, p90 coverage.

Conventions (the ``prewarm backtest`` JSON contract):
- ``mase``: per series, mean absolute error of the point forecast divided by the in-sample mean
  absolute error of the one-season naive forecast (training part only); aggregated as the
  request-volume-weighted mean over series (weights: requests in the test part).
- Every metric is over the same scored series (``series``): those with a non-zero scale (not
  constant in training) and at least one request in the test part. A series with no request in
  the test part has nothing to forecast: it has zero weight in the volume-weighted metrics anyway,
  and its steps would only add trivially covered zeros to ``coverage_p90``.
- ``mase_median``: the median of per-series MASE.
- ``pinball_p90``: pinball loss of the p90 forecast, scaled like MASE, volume-weighted.
- ``coverage_p90``: share of (series, origin, step) with ``actual <= p90``; pooled over the
  scored series.
- ``under_forecast_rate``: ``1 - coverage_p90``.
Must not: do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecaster.types import FloatArray


@dataclass(frozen=True, slots=True)
class Scores:
    """The backtest metrics of one method on one trace."""

    mase: float
    mase_median: float
    pinball_p90: float
    coverage_p90: float
    under_forecast_rate: float
    series: int

    def as_dict(self) -> dict[str, float | int]:
        """The JSON form (the CLI contract)."""
        return {
            "mase": self.mase,
            "mase_median": self.mase_median,
            "pinball_p90": self.pinball_p90,
            "coverage_p90": self.coverage_p90,
            "under_forecast_rate": self.under_forecast_rate,
            "series": self.series,
        }


def naive_scale(train: FloatArray, season: int) -> FloatArray:
    """Per series: in-sample mean ``|y_t - y_{t-season}|`` over ``train (n, T)`` (NaN skipped)."""
    lag = max(1, season)
    if train.shape[1] <= lag:
        return np.full(train.shape[0], np.nan)
    diff = np.abs(train[:, lag:] - train[:, :-lag])
    finite = np.isfinite(diff)
    count = finite.sum(axis=1)
    total = np.where(finite, diff, 0.0).sum(axis=1)
    out: FloatArray = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def score(actual: FloatArray, point: FloatArray, p90: FloatArray, scale: FloatArray) -> Scores:
    """Metrics for forecasts ``(n, origins, horizon)`` against ``actual`` of the same shape."""
    valid = np.isfinite(actual)
    abs_error = np.where(valid, np.abs(actual - point), np.nan)
    diff = actual - p90
    loss = np.where(valid, np.maximum(0.9 * diff, -0.1 * diff), np.nan)
    counted = valid.reshape(valid.shape[0], -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.nansum(abs_error.reshape(abs_error.shape[0], -1), axis=1) / np.maximum(counted, 1)
        pin = np.nansum(loss.reshape(loss.shape[0], -1), axis=1) / np.maximum(counted, 1)
    volume = np.nansum(actual.reshape(actual.shape[0], -1), axis=1)
    usable = (scale > 0) & np.isfinite(scale) & (counted > 0) & (volume > 0)
    mase_series = mae[usable] / scale[usable]
    pin_series = pin[usable] / scale[usable]
    weights = volume[usable]
    if mase_series.size == 0:
        mase = mase_median = pinball = float("nan")
    else:
        if weights.sum() <= 0:
            weights = np.ones_like(weights)
        mase = float(np.average(mase_series, weights=weights))
        mase_median = float(np.median(mase_series))
        pinball = float(np.average(pin_series, weights=weights))
    scored = valid & usable[:, None, None]
    covered = (actual <= p90 + 1e-9) & scored
    total = int(scored.sum())
    coverage = float(covered.sum() / total) if total else float("nan")
    return Scores(
        mase=mase,
        mase_median=mase_median,
        pinball_p90=pinball,
        coverage_p90=coverage,
        under_forecast_rate=1.0 - coverage if total else float("nan"),
        series=int(usable.sum()),
    )
