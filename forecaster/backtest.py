"""Rolling-origin backtests of prewarm's engine against the simple methods users could run instead.

Owns: splitting a :class:`SeriesBatch` into a training part and a test part (the last 20%, at most
7 days), the origins, the baselines (:data:`BASELINES`: last-value naive, seasonal naive; additive
Holt-Winters with one season, as the predictive horizontal pod autoscaler does; damped-trend ETS;
statsforecast's, registered from :mod:`forecaster.baselines`, which says how they run),
driving :class:`AutoForecaster` exactly as the daemon would (observe, then forecast, at every
origin), and the scores (:mod:`forecaster.metrics`, :mod:`forecaster.prewarm_metrics`). "One
season" is a day when the training part spans at least two days, otherwise there is no season
(period 1, i.e. naive).

Origins: the daemon forecasts again whenever a new complete history step arrives (its tick is
shorter than a step; ``ForecastFeed.refresh``), so its planning cadence is one step of the trace
and every step of the test part is a candidate origin. At most ``max_origins`` of them
(:data:`MAX_ORIGINS`; every series shares them) are used, evenly spread over the test part: the
scores are means over origins, and a few hundred spread origins estimate them as well as
thousands of adjacent ones at a fraction of the cost. Between origins the engine is not refitted:
it folds the new steps in and updates its online state (selection losses, calibration), which is
what the daemon does too; its periodic refit follows observed time, as in the daemon.

Short histories (``history_steps``): each origin's forecast may see only the last
``history_steps`` steps. The engine then starts afresh at every origin (a new model: it observes
that window and runs its warm-up refit on it), so the origins are capped lower
(:data:`HISTORY_MAX_ORIGINS`), and it is compared with the last-value naive only (the fitted
baselines need more history than a new model has).

Point forecasts: ``prewarm``'s mean (``Forecast.mean``, selected on absolute error); the
baselines' own point forecast. Every method's p90 comes from its own residuals: the baselines'
from in-sample k-step errors (per series, per step ahead, training part), prewarm's from its
conformal calibration (with a history limit, both only from the history each origin may see),
statsforecast's from their prediction intervals or residuals (:mod:`forecaster.baselines`).
Must not: do I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from common.errors import InvalidInput
from forecaster import baselines
from forecaster.engine import AutoForecaster
from forecaster.metrics import Scores, naive_scale, score
from forecaster.models import holt_winters
from forecaster.prewarm_metrics import PrewarmScores, prewarm_scores, spike_thresholds
from forecaster.types import FloatArray, SeriesBatch

PREWARM = "prewarm"
NAIVE = "naive"
MAX_ORIGINS = 400
"""Default cap on origins (per series; all series share them), evenly spread over the test part."""
HISTORY_MAX_ORIGINS = 32
"""Default cap with ``history_steps`` (the engine starts afresh, with a warm-up, at every one)."""

Progress = Callable[[str, float], None]
"""``progress(task, fraction_done)``: called as a backtest advances (for a progress bar)."""


@dataclass(frozen=True, slots=True)
class BacktestPlan:
    """Where the test part starts, the origins, the season used, and the history each origin may
    see (``None``: all of it)."""

    horizon: int
    season: int
    train_end: int
    origins: np.ndarray
    history: int | None = None


@dataclass(frozen=True, slots=True)
class BaselineInput:
    """What a baseline forecaster is given: the whole trace (it must only read each origin's
    past), the plan, and the progress callback under its own name."""

    counts: FloatArray
    plan: BacktestPlan
    progress: Progress | None
    name: str
    step_s: float = 60.0
    notes: list[str] = field(default_factory=list)
    """Where a baseline records what it could not do (the result's notes)."""


Baseline = Callable[[BaselineInput], tuple[FloatArray, FloatArray]]
"""A baseline: ``(point, p90)``, each ``(series, origins, horizon)``, non-negative."""


@dataclass(slots=True)
class BacktestResult:
    """Scores per method, plus what a report needs to explain them."""

    plan: BacktestPlan
    scores: dict[str, Scores]
    prewarming: dict[str, PrewarmScores] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What a report must say: seasons the history cannot hold, baselines not run."""


def plan_backtest(
    batch: SeriesBatch,
    *,
    horizon_steps: int,
    test_fraction: float = 0.2,
    max_test_s: float = 7 * 86400.0,
    max_origins: int | None = None,
    history_steps: int | None = None,
) -> BacktestPlan:
    """Choose the test part and the origins: every step of the test part (the daemon's cadence),
    at most ``max_origins`` of them (default :data:`MAX_ORIGINS`, or :data:`HISTORY_MAX_ORIGINS`
    with ``history_steps``) evenly spread, the first and the last always included."""
    steps = batch.steps
    test = min(math.ceil(steps * test_fraction), round(max_test_s / batch.step_s))
    train_end = steps - test
    if train_end < 2 * horizon_steps or test < horizon_steps:
        raise InvalidInput(
            f"trace too short for a backtest at a {horizon_steps}-step horizon: {steps} steps "
            f"of {batch.step_s:g} s; need at least {5 * horizon_steps} steps"
        )
    if history_steps is not None and history_steps < 1:
        raise InvalidInput(f"history must be at least one step, got {history_steps} steps")
    cap = max_origins or (MAX_ORIGINS if history_steps is None else HISTORY_MAX_ORIGINS)
    day = round(86400.0 / batch.step_s)
    season = day if train_end >= 2 * day else 0
    last_origin = steps - horizon_steps
    count = last_origin - train_end + 1
    origins = np.unique(np.round(np.linspace(train_end, last_origin, min(count, cap))))
    return BacktestPlan(
        horizon=horizon_steps,
        season=season,
        train_end=train_end,
        origins=origins.astype(np.int64),
        history=history_steps,
    )


def run_backtest(
    batch: SeriesBatch,
    *,
    horizon_steps: int,
    methods: Sequence[str] | None = None,
    progress: Progress | None = None,
    plan: BacktestPlan | None = None,
) -> BacktestResult:
    """Run every method in ``methods`` over the same origins and score them.

    ``methods`` defaults to :data:`METHODS`, or to prewarm and the last-value naive when the plan
    truncates history (the only methods that can run on it; others are :class:`InvalidInput`).
    """
    plan = plan or plan_backtest(batch, horizon_steps=horizon_steps)
    allowed = METHODS if plan.history is None else (PREWARM, NAIVE)
    chosen = tuple(methods) if methods is not None else allowed
    unknown = [name for name in chosen if name not in allowed]
    if unknown:
        extra = "" if plan.history is None else " with a history limit"
        raise InvalidInput(f"unknown method(s) {unknown}{extra}; choose from {list(allowed)}")
    counts = batch.counts
    actual = _windows(counts, plan.origins, plan.horizon)
    scale = naive_scale(counts[:, : plan.train_end], plan.season)
    first = int(plan.origins[0])
    spiky = spike_thresholds(counts, batch.step_s, start=first)
    threshold = _windows(spiky, plan.origins - first, plan.horizon)
    result = BacktestResult(plan=plan, scores={})
    for name in chosen:
        started = time.perf_counter()
        try:
            if name == PREWARM:
                point, p90 = _run_engine(batch, plan, progress, result)
            else:
                job = BaselineInput(counts, plan, progress, name, batch.step_s, result.notes)
                point, p90 = BASELINES[name](job)
        except baselines.NotRun as skipped:
            result.notes.append(str(skipped))
            continue
        result.seconds[name] = time.perf_counter() - started
        result.scores[name] = score(actual, point, p90, scale)
        result.prewarming[name] = prewarm_scores(
            actual, point, p90, threshold, origins=plan.origins, step_s=batch.step_s
        )
    return result


def _run_statsforecast(job: BaselineInput) -> tuple[FloatArray, FloatArray]:
    """One of :mod:`forecaster.baselines`' statsforecast methods (``job.name``); raises
    :class:`forecaster.baselines.NotRun` when it cannot run on this trace."""
    plan = job.plan
    run = baselines.run_baseline(
        job.name,
        job.counts,
        step_s=job.step_s,
        train_end=plan.train_end,
        origins=plan.origins,
        horizon=plan.horizon,
        progress=job.progress,
    )
    job.notes.extend(note for note in run.notes if note not in job.notes)
    return run.point, run.p90


def _windows(values: FloatArray, origins: np.ndarray, horizon: int) -> FloatArray:
    index = origins[:, None] + np.arange(horizon)[None, :]
    out: FloatArray = values[:, index]
    return out


def _report(progress: Progress | None, task: str, position: int, total: int) -> None:
    if progress is not None:
        progress(task, position / max(1, total))


def _run_engine(
    batch: SeriesBatch, plan: BacktestPlan, progress: Progress | None, result: BacktestResult
) -> tuple[FloatArray, FloatArray]:
    n = len(batch.models)
    point = np.zeros((n, plan.origins.size, plan.horizon))
    p90 = np.zeros_like(point)
    levels = (0.5, 0.9)
    score_horizon_s = max(1800.0, plan.horizon * batch.step_s)
    engine = AutoForecaster(step_s=batch.step_s, score_horizon_s=score_horizon_s)
    observed = 0
    for position, origin in enumerate(int(o) for o in plan.origins):
        if plan.history is not None:
            # A new model: a fresh engine that sees only the last ``history`` steps, with its
            # warm-up refit run in full (the daemon's would be spread over its first cycles).
            observed = max(0, origin - plan.history)
            engine = AutoForecaster(
                step_s=batch.step_s,
                score_horizon_s=score_horizon_s,
                history_window_s=plan.history * batch.step_s,
            )
        engine.observe(
            SeriesBatch(
                models=batch.models,
                start_s=batch.start_s + observed * batch.step_s,
                step_s=batch.step_s,
                counts=batch.counts[:, observed:origin],
            )
        )
        observed = origin
        if plan.history is not None:
            engine.refit()
        forecasts = engine.forecast(horizon_steps=plan.horizon, quantiles=levels)
        for row, model in enumerate(batch.models):
            forecast = forecasts[model]
            point[row, position] = forecast.mean
            p90[row, position] = forecast.values[1]
        _report(progress, PREWARM, position + 1, plan.origins.size)
    result.chosen = dict(engine.stats.chosen)
    return point, p90


def _seasonal_source(origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    lag = max(1, season)
    ahead = np.arange(horizon)
    return origins[:, None] + ahead[None, :] - lag * (ahead[None, :] // lag + 1)


def _run_seasonal_naive(
    job: BaselineInput, *, season: int | None = None
) -> tuple[FloatArray, FloatArray]:
    """The value one season (``season``, default the plan's) before each step; with no season,
    the last value. p90: plus the in-sample error quantile per step ahead, of the training part
    (with a history limit: of the history each origin may see)."""
    counts, plan = job.counts, job.plan
    lag = max(1, plan.season if season is None else season)
    filled = np.where(np.isfinite(counts), counts, 0.0)
    source = _seasonal_source(plan.origins, plan.horizon, lag)
    point = filled[:, np.maximum(source, 0)]
    fit_origins = np.arange(
        max(lag * (plan.horizon // lag + 1), plan.train_end - 4 * max(lag, 500)),
        plan.train_end - plan.horizon + 1,
    )
    if plan.history is None:
        p90 = (
            point
            + _residual_quantile(
                counts, filled[:, _seasonal_source(fit_origins, plan.horizon, lag)], fit_origins
            )[:, None, :]
        )
    else:
        # A history limit binds the errors too: each origin's p90 comes from the errors the
        # method made inside the history that origin may see.
        p90 = np.empty_like(point)
        for position, origin in enumerate(int(o) for o in plan.origins):
            first = max(lag * (plan.horizon // lag + 1), origin - plan.history + lag)
            inside = np.arange(first, origin - plan.horizon + 1)
            in_sample = filled[:, _seasonal_source(inside, plan.horizon, lag)]
            quantile = _residual_quantile(counts, in_sample, inside)
            p90[:, position] = point[:, position] + quantile
    _report(job.progress, job.name, 1, 1)
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


def _run_ets(job: BaselineInput, *, kind: str) -> tuple[FloatArray, FloatArray]:
    counts, plan, progress = job.counts, job.plan, job.progress
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
        _report(progress, job.name, row + 1, n + 1)
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
    _report(progress, job.name, 1, 1)
    return point, p90


# The baselines, by name, in table order. A new baseline is one entry here: a function of a
# ``BaselineInput`` returning ``(point, p90)`` on the plan's origins.
BASELINES: Mapping[str, Baseline] = {
    NAIVE: partial(_run_seasonal_naive, season=0),
    "seasonal-naive": _run_seasonal_naive,
    "holt-winters": partial(_run_ets, kind="holt-winters"),
    "ets": partial(_run_ets, kind="ets"),
    # statsforecast's (``prewarm[baselines]``), on the same origins.
    **dict.fromkeys(baselines.NAMES, _run_statsforecast),
}

METHODS: tuple[str, ...] = (PREWARM, *BASELINES)
"""Every method ``run_backtest`` knows, prewarm first."""
