"""Rolling-origin backtests of prewarm's engine against the simple methods users could run instead.

Owns: splitting a :class:`SeriesBatch` into a training part and a test part (the last 20%, at most
7 days), the origins, the baselines (seasonal naive; additive Holt-Winters with one season, as the
predictive horizontal pod autoscaler does; damped-trend ETS), driving :class:`AutoForecaster`
exactly as the daemon would (observe, then forecast, at every origin), and the scores
(:mod:`forecaster.metrics`). "One season" is a day when the training part spans at least two days,
otherwise there is no season (period 1, i.e. naive).

Point forecasts: ``prewarm``'s mean (``Forecast.mean``, selected on absolute error); the
baselines' own point forecast. Every method's p90 comes from its own residuals: the baselines'
from in-sample k-step errors (per series, per step ahead), prewarm's from its conformal
calibration. Must not: do I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.errors import InvalidInput
from forecaster.engine import AutoForecaster
from forecaster.metrics import Scores, naive_scale, score
from forecaster.models import holt_winters
from forecaster.types import FloatArray, SeriesBatch

METHODS: tuple[str, ...] = ("prewarm", "seasonal-naive", "holt-winters", "ets")
Progress = Callable[[str, float], None]
"""``progress(task, fraction_done)``: called as a backtest advances (for a progress bar)."""


@dataclass(frozen=True, slots=True)
class BacktestPlan:
    """Where the test part starts, the origins and the season used."""

    horizon: int
    season: int
    train_end: int
    origins: np.ndarray


@dataclass(slots=True)
class BacktestResult:
    """Scores per method, plus what a report needs to explain them."""

    plan: BacktestPlan
    scores: dict[str, Scores]
    seconds: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, int] = field(default_factory=dict)


def plan_backtest(
    batch: SeriesBatch,
    *,
    horizon_steps: int,
    test_fraction: float = 0.2,
    max_test_s: float = 7 * 86400.0,
    max_origins: int = 2500,
) -> BacktestPlan:
    """Choose the test part and the origins (at most ``max_origins``, evenly strided)."""
    steps = batch.steps
    test = min(math.ceil(steps * test_fraction), round(max_test_s / batch.step_s))
    train_end = steps - test
    if train_end < 2 * horizon_steps or test < horizon_steps:
        raise InvalidInput(
            f"trace too short for a backtest at a {horizon_steps}-step horizon: {steps} steps "
            f"of {batch.step_s:g} s; need at least {5 * horizon_steps} steps"
        )
    day = round(86400.0 / batch.step_s)
    season = day if train_end >= 2 * day else 0
    last_origin = steps - horizon_steps
    count = last_origin - train_end + 1
    stride = max(1, math.ceil(count / max_origins))
    origins = np.arange(train_end, last_origin + 1, stride, dtype=np.int64)
    return BacktestPlan(horizon=horizon_steps, season=season, train_end=train_end, origins=origins)


def run_backtest(
    batch: SeriesBatch,
    *,
    horizon_steps: int,
    methods: Sequence[str] = METHODS,
    progress: Progress | None = None,
    plan: BacktestPlan | None = None,
) -> BacktestResult:
    """Run every method in ``methods`` over the same origins and score them."""
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise InvalidInput(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    plan = plan or plan_backtest(batch, horizon_steps=horizon_steps)
    counts = batch.counts
    actual = _windows(counts, plan.origins, plan.horizon)
    scale = naive_scale(counts[:, : plan.train_end], plan.season)
    result = BacktestResult(plan=plan, scores={})
    runners: dict[str, Callable[[], tuple[FloatArray, FloatArray]]] = {
        "prewarm": lambda: _run_engine(batch, plan, progress, result),
        "seasonal-naive": lambda: _run_seasonal_naive(counts, plan),
        "holt-winters": lambda: _run_ets(counts, plan, progress, kind="holt-winters"),
        "ets": lambda: _run_ets(counts, plan, progress, kind="ets"),
    }
    for name in methods:
        started = time.perf_counter()
        point, p90 = runners[name]()
        result.seconds[name] = time.perf_counter() - started
        result.scores[name] = score(actual, point, p90, scale)
    return result


def _windows(values: FloatArray, origins: np.ndarray, horizon: int) -> FloatArray:
    index = origins[:, None] + np.arange(horizon)[None, :]
    out: FloatArray = values[:, index]
    return out


def _run_engine(
    batch: SeriesBatch, plan: BacktestPlan, progress: Progress | None, result: BacktestResult
) -> tuple[FloatArray, FloatArray]:
    engine = AutoForecaster(
        step_s=batch.step_s, score_horizon_s=max(1800.0, plan.horizon * batch.step_s)
    )
    n = len(batch.models)
    point = np.zeros((n, plan.origins.size, plan.horizon))
    p90 = np.zeros_like(point)
    observed = 0
    levels = (0.5, 0.9)
    for position, origin in enumerate(plan.origins):
        origin = int(origin)
        engine.observe(
            SeriesBatch(
                models=batch.models,
                start_s=batch.start_s + observed * batch.step_s,
                step_s=batch.step_s,
                counts=batch.counts[:, observed:origin],
            )
        )
        observed = origin
        forecasts = engine.forecast(horizon_steps=plan.horizon, quantiles=levels)
        for row, model in enumerate(batch.models):
            forecast = forecasts[model]
            point[row, position] = forecast.mean
            p90[row, position] = forecast.values[1]
        if progress is not None and position % 20 == 0:
            progress("prewarm", position / plan.origins.size)
    if progress is not None:
        progress("prewarm", 1.0)
    result.chosen = dict(engine.stats.chosen)
    return point, p90


def _seasonal_source(origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    lag = max(1, season)
    ahead = np.arange(horizon)
    return origins[:, None] + ahead[None, :] - lag * (ahead[None, :] // lag + 1)


def _run_seasonal_naive(counts: FloatArray, plan: BacktestPlan) -> tuple[FloatArray, FloatArray]:
    filled = np.where(np.isfinite(counts), counts, 0.0)
    source = _seasonal_source(plan.origins, plan.horizon, plan.season)
    point = filled[:, np.maximum(source, 0)]
    lag = max(1, plan.season)
    fit_origins = np.arange(
        max(lag * (plan.horizon // lag + 1), plan.train_end - 4 * max(lag, 500)),
        plan.train_end - plan.horizon + 1,
    )
    p90 = (
        point
        + _residual_quantile(
            counts, filled[:, _seasonal_source(fit_origins, plan.horizon, plan.season)], fit_origins
        )[:, None, :]
    )
    return point, np.maximum(p90, 0.0)


def _residual_quantile(
    counts: FloatArray, in_sample: FloatArray, fit_origins: np.ndarray, level: float = 0.9
) -> FloatArray:
    """Per series and step ahead: the ``level`` quantile of in-sample errors ``(n, horizon)``."""
    horizon = in_sample.shape[2]
    actual = _windows(counts, fit_origins, horizon)
    errors = actual - in_sample
    if fit_origins.size == 0:
        return np.zeros((counts.shape[0], horizon))
    quantile = np.nanquantile(errors, level, axis=1)
    out: FloatArray = np.where(np.isfinite(quantile), quantile, 0.0)
    return out


def _run_ets(
    counts: FloatArray, plan: BacktestPlan, progress: Progress | None, *, kind: str
) -> tuple[FloatArray, FloatArray]:
    season = plan.season
    window = min(plan.train_end, max(4 * season, 2000))
    fit_start = plan.train_end - window
    params = []
    n = counts.shape[0]
    for row in range(n):
        train = counts[row, fit_start : plan.train_end]
        if kind == "holt-winters":
            params.append(holt_winters.fit_holt_winters(train, season=season))
        else:
            params.append(holt_winters.fit_ets(train))
        if progress is not None and row % 10 == 0:
            progress(kind, row / n)
    # Series that could not be fitted seasonally fall back to season 0; filter by season length.
    point = np.zeros((n, plan.origins.size, plan.horizon))
    p90 = np.zeros_like(point)
    for length in sorted({p.season for p in params}):
        rows = [i for i, p in enumerate(params) if p.season == length]
        stacked = holt_winters.stack_params([params[i] for i in rows])
        states = holt_winters.run_filter(counts[rows, fit_start:], stacked)
        origins = plan.origins - fit_start
        forecast = holt_winters.forecast_at(states, origins, plan.horizon)
        fit_origins = np.arange(max(1, length), plan.train_end - fit_start - plan.horizon + 1)
        in_sample = holt_winters.forecast_at(states, fit_origins, plan.horizon)
        quantile = _residual_quantile(counts[rows, fit_start:], in_sample, fit_origins)
        point[rows] = np.maximum(forecast, 0.0)
        p90[rows] = np.maximum(forecast + quantile[:, None, :], 0.0)
    if progress is not None:
        progress(kind, 1.0)
    return point, p90
