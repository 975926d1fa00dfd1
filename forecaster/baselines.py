"""The baselines a data scientist would pick, from statsforecast, for ``prewarm backtest``.

Owns: running statsforecast's AutoETS, MSTL (daily + weekly), AutoTheta, and the intermittent-
demand methods CrostonSBA, ADIDA and TSB at the backtest's origins, and their p90. Numpy in and
out; statsforecast's classes are used directly (no DataFrames, ``n_jobs`` is moot: one process).
statsforecast is an optional extra (``prewarm[baselines]``): it pulls in numba and llvmlite
(about 210 MB), which the daemon does not need; :func:`require` says how to install it.

How each baseline is run (every one on the backtest's own origins and horizon):

- Fit once per series on the end of the training part (:data:`FIT_WINDOW_STEPS`, or three of the
  longest season used, whichever is longer); at each origin the fitted model is applied to the
  history up to the origin with statsforecast's ``forward`` (parameters kept, states re-filtered
  over a trailing window of :data:`FORWARD_WINDOW_STEPS`, or two seasons). Windows start at a
  whole number of seasons after the fit window's start, so a seasonal state keeps its phase. This
  is how the daemon would use them too (refit now and then, update every cycle).
- ``autoets``: ``AutoETS(season_length=day)``; statsforecast fits no seasonal ETS for a season
  longer than 24 steps (hourly data), so on 1-minute and 10-minute data it is non-seasonal.
- ``mstl``: ``MSTL(season_length=[day, week])``, trend model ``AutoETS(model="AZN")``
  (statsforecast's default ``ZZN`` with additive errors: see :func:`_mstl`). The decomposition
  (STL, seconds per series for a 1-minute day) is
  fitted once; at each origin the seasonal components continue as MSTL's own forecast does (each
  repeats its last cycle) and the trend model is forwarded over the deseasonalised history.
- ``autotheta``: ``AutoTheta(season_length=day)`` (its own seasonality test decides whether it
  deseasonalises). When it does, the series is deseasonalised once with its fitted cycle and a
  non-seasonal Theta fitted on that is forwarded (re-decomposing at every origin costs ~15 ms).
- ``croston-sba``, ``adida``, ``tsb`` (``alpha_d = alpha_p = 0.1``): parameter-free (or fixed)
  per origin, forecast from the last :data:`INTERMITTENT_WINDOW_STEPS` steps. They run on every
  series, so their scores compare with the others'; :func:`intermittent_series` says which series
  they are meant for (Syntetos-Boylan: average inter-demand interval above 1.32 steps).

Seasons (:func:`seasons`): daily = 86,400 s / step, weekly = 604,800 s / step (1-minute steps:
1,440 and 10,080); a season is used only when the training part holds two whole cycles of it
(it is then at most half the history), and never when it is shorter than 2 steps.

p90: ``autoets``, ``mstl`` and ``autotheta`` from statsforecast's native prediction intervals,
the upper end of the central 80% interval (``level=[80]``, ``hi-80``), which is the p90 under
their Gaussian errors. CrostonSBA, ADIDA and TSB have no native intervals: their p90 is the point
forecast plus the series' 0.9 quantile of one-step in-sample errors over the fit window (their
forecasts are flat, so the same offset is used at every step ahead). Forecasts and p90 are
clipped at 0 (counts).

Numba: statsforecast compiles its kernels on first use (about 10-20 s in all on 2 cores);
:func:`require` turns on numba's on-disk cache (``NIXTLA_NUMBA_CACHE``) unless the caller set it.
Must not: do I/O (beyond numba's own cache).
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import InvalidInput
from forecaster.types import FloatArray

NAMES: tuple[str, ...] = ("autoets", "mstl", "autotheta", "croston-sba", "adida", "tsb")
"""The statsforecast baselines, in the order the backtest reports them."""
INTERMITTENT: frozenset[str] = frozenset({"croston-sba", "adida", "tsb"})
DAY_S = 86400.0
WEEK_S = 7 * DAY_S
FIT_WINDOW_STEPS = 2000
FORWARD_WINDOW_STEPS = 500
INTERMITTENT_WINDOW_STEPS = 1000
ADI_THRESHOLD = 1.32
"""Syntetos-Boylan: demand is intermittent when the average interval between non-zero steps
(steps / non-zero steps) exceeds 1.32, i.e. when more than ~24% of the steps are zero."""
ETS_MAX_SEASON = 24
"""statsforecast's ETS fits no seasonal component for a longer season (as R's ``forecast::ets``)."""
INSTALL_HINT = (
    "the statsforecast baselines need the optional extra: pip install 'prewarm[baselines]' "
    "(or choose --methods among prewarm, seasonal-naive, holt-winters, ets)"
)
Progress = Callable[[str, float], None]


class NotRun(InvalidInput):
    """This baseline cannot run on this history (e.g. MSTL with no season); a report notes it."""


def available() -> bool:
    """Whether statsforecast can be imported (without importing it: that costs ~2 s)."""
    return importlib.util.find_spec("statsforecast") is not None


def require() -> Any:
    """statsforecast's ``models`` module; :class:`InvalidInput` saying how to install it if absent.

    Turns on numba's on-disk cache first (``NIXTLA_NUMBA_CACHE=1`` unless already set), so the
    compile cost is paid once per machine, not per run.
    """
    if not available():
        raise InvalidInput(INSTALL_HINT)
    os.environ.setdefault("NIXTLA_NUMBA_CACHE", "1")
    from statsforecast import models

    return models


def seasons(step_s: float, train_steps: int) -> tuple[tuple[int, ...], list[str]]:
    """The usable seasons (daily, weekly, in steps) for a training part, and why others are not.

    A season needs at least 2 steps and two whole cycles in the training part.
    """
    out: list[int] = []
    notes: list[str] = []
    for label, seconds in (("daily", DAY_S), ("weekly", WEEK_S)):
        period = round(seconds / step_s)
        if period < 2:
            notes.append(f"{label} season skipped: a step of {step_s:g} s leaves < 2 steps a cycle")
        elif 2 * period > train_steps:
            notes.append(
                f"{label} season ({period} steps) skipped: the training part ({train_steps} "
                f"steps) holds fewer than two cycles"
            )
        else:
            out.append(period)
    return tuple(out), notes


def intermittent_series(train: FloatArray) -> np.ndarray:
    """Per series of ``train (n, T)``: intermittent by Syntetos-Boylan (ADI > 1.32), NaN skipped.

    A series with no demand at all counts as intermittent.
    """
    observed = np.isfinite(train).sum(axis=1)
    active = (np.nan_to_num(train, nan=0.0) > 0).sum(axis=1)
    adi = np.where(active > 0, observed / np.maximum(active, 1), np.inf)
    out: np.ndarray = adi > ADI_THRESHOLD
    return out


@dataclass(slots=True)
class BaselineRun:
    """Forecasts ``(n, origins, horizon)`` of one baseline, and what a report should say."""

    point: FloatArray
    p90: FloatArray
    notes: list[str] = field(default_factory=list)


def _filled(row: FloatArray) -> FloatArray:
    """Missing steps carry the last observed value forward (0 before the first): statsforecast
    takes no NaN, and a scrape gap is not an observed zero."""
    values = np.asarray(row, dtype=np.float64)
    finite = np.isfinite(values)
    if finite.all():
        return values.copy()
    index = np.where(finite, np.arange(values.size), -1)
    np.maximum.accumulate(index, out=index)
    out: FloatArray = np.where(index >= 0, values[np.maximum(index, 0)], 0.0)
    return out


def _window_start(origin: int, *, anchor: int, period: int, length: int) -> int:
    """The latest start ``<= origin - length`` that is ``anchor`` plus whole ``period``s (or
    ``anchor`` itself when the origin is that close)."""
    room = origin - length - anchor
    if room <= 0:
        return anchor
    return anchor + (room // period) * period


def run_baseline(
    name: str,
    counts: FloatArray,
    *,
    step_s: float,
    train_end: int,
    origins: np.ndarray,
    horizon: int,
    progress: Progress | None = None,
) -> BaselineRun:
    """Forecasts of baseline ``name`` (one of :data:`NAMES`) at ``origins`` over ``counts (n, T)``.

    Fits on ``counts[:, :train_end]`` only; origins must lie in ``[train_end, T - horizon]``.
    A season the history cannot hold is dropped with a note; ``mstl`` without any season is not
    run (:class:`NotRun`, which the backtest reports as a note). A series statsforecast cannot
    fit (it raises) gets the last observed value as its forecast, and the count is noted.
    """
    if name not in NAMES:
        raise InvalidInput(f"unknown baseline {name!r}; choose from {list(NAMES)}")
    models = require()
    used, season_notes = seasons(step_s, train_end)
    notes = [] if name in INTERMITTENT else season_notes
    if name == "mstl" and not used:
        raise NotRun(f"mstl not run: no season fits the training part ({'; '.join(season_notes)})")
    n = counts.shape[0]
    point = np.zeros((n, origins.size, horizon))
    p90 = np.zeros_like(point)
    fallbacks = 0
    for row in range(n):
        y = _filled(counts[row])
        with warnings.catch_warnings():
            # statsforecast and statsmodels warn on flat or short series; the forecast is still
            # defined (and a failure is handled below), so the warning adds nothing to a report.
            warnings.simplefilter("ignore")
            try:
                if name in INTERMITTENT:
                    out = _intermittent(models, name, y, train_end, origins, horizon)
                elif name == "mstl":
                    out = _mstl(models, y, used, train_end, origins, horizon)
                else:
                    out = _forwarded(models, name, y, used, train_end, origins, horizon)
            except Exception:  # noqa: BLE001
                # statsforecast raises bare ``Exception`` ("no model able to be fitted") and
                # NotImplementedError ("tiny datasets"): any failure to fit one series is that
                # series' problem, counted in the notes, not the whole backtest's.
                fallbacks += 1
                last = np.repeat(y[origins - 1][:, None], horizon, axis=1)
                out = (last, last)
        point[row], p90[row] = out
        if progress is not None and row % 10 == 0:
            progress(name, row / n)
    if progress is not None:
        progress(name, 1.0)
    if fallbacks:
        notes.append(f"{name}: {fallbacks} of {n} series could not be fitted (last value used)")
    bad = ~(np.isfinite(point) & np.isfinite(p90))
    if bad.any():
        notes.append(f"{name}: {int(bad.sum())} non-finite forecasts replaced by 0")
    return BaselineRun(
        point=np.maximum(np.where(bad, 0.0, point), 0.0),
        p90=np.maximum(np.where(bad, 0.0, np.maximum(p90, point)), 0.0),
        notes=notes,
    )


def _fit_start(train_end: int, longest: int) -> int:
    return max(0, train_end - max(FIT_WINDOW_STEPS, 3 * longest))


def _forwarded(
    models: Any,
    name: str,
    y: FloatArray,
    used: tuple[int, ...],
    train_end: int,
    origins: np.ndarray,
    horizon: int,
) -> tuple[FloatArray, FloatArray]:
    day = used[0] if used else 1
    season = day if name == "autotheta" or day <= ETS_MAX_SEASON else 1
    start = _fit_start(train_end, season)
    values = y
    seasonal: FloatArray | None = None
    multiplicative = False
    if name == "autoets":
        model = models.AutoETS(season_length=season).fit(y[start:train_end])
    else:
        model = models.AutoTheta(season_length=season).fit(y[start:train_end])
        fitted = model.model_
        if fitted.get("decompose", False):
            # AutoTheta deseasonalised (its autocorrelation test found the season): its seasonal
            # indices come from a classical decomposition, strictly periodic, and it forecasts
            # them by repeating the last cycle. Deseasonalise the whole series with that cycle
            # once, and forward a non-seasonal Theta fitted on the same deseasonalised data
            # (the same parameters AutoTheta chose), instead of re-decomposing at every origin.
            cycle = np.asarray(fitted["seas_forecast"]["mean"], dtype=np.float64)
            phase = (np.arange(y.size) - train_end) % season
            seasonal = cycle[phase]
            multiplicative = fitted["decomposition_type"] == "multiplicative"
            values = y / seasonal if multiplicative else y - seasonal
            model = models.AutoTheta(season_length=1).fit(values[start:train_end])
            season = 1
    length = max(FORWARD_WINDOW_STEPS, 2 * season)
    point = np.empty((origins.size, horizon))
    upper = np.empty_like(point)
    for position, origin in enumerate(origins):
        origin = int(origin)
        begin = _window_start(origin, anchor=start, period=season, length=length)
        result = model.forward(y=values[begin:origin], h=horizon, level=[80])
        point[position] = result["mean"]
        upper[position] = result["hi-80"]
    if seasonal is not None:
        ahead = origins[:, None] + np.arange(horizon)[None, :]
        if multiplicative:
            point, upper = point * seasonal[ahead], upper * seasonal[ahead]
        else:
            point, upper = point + seasonal[ahead], upper + seasonal[ahead]
    return point, upper


def _mstl(
    models: Any,
    y: FloatArray,
    used: tuple[int, ...],
    train_end: int,
    origins: np.ndarray,
    horizon: int,
) -> tuple[FloatArray, FloatArray]:
    start = _fit_start(train_end, max(used))
    # The trend model is statsforecast's default family with additive errors (``AZN`` rather
    # than ``ZZN``): the deseasonalised series goes negative where a cycle overshoots, and a
    # multiplicative model forwarded over such a window gave p90s of 1e16 requests.
    trend_model = models.AutoETS(model="AZN")
    model = models.MSTL(season_length=list(used), trend_forecaster=trend_model)
    model = model.fit(y[start:train_end])
    decomposition = model.model_
    # Each seasonal component continues by repeating its last cycle (MSTL's own forecast):
    # the seasonal part of any step from the fit window's start to the end of the series.
    steps = y.size - start
    seasonal = np.zeros(steps)
    fitted = train_end - start
    ahead = np.arange(steps - fitted)
    for period in used:
        # statsforecast names the column "seasonal" with one season, "seasonal<period>" with more.
        column = "seasonal" if len(used) == 1 else f"seasonal{period}"
        component = np.asarray(decomposition[column], dtype=np.float64)
        seasonal[:fitted] += component
        seasonal[fitted:] += component[fitted - period + ahead % period]
    adjusted = y[start:] - seasonal
    trend = model.trend_forecaster
    point = np.empty((origins.size, horizon))
    upper = np.empty_like(point)
    for position, origin in enumerate(origins):
        at = int(origin) - start
        begin = max(0, at - FORWARD_WINDOW_STEPS)
        result = trend.forward(y=adjusted[begin:at], h=horizon, level=[80])
        season = seasonal[at : at + horizon]
        point[position] = result["mean"] + season
        upper[position] = result["hi-80"] + season
    return point, upper


def _intermittent(
    models: Any,
    name: str,
    y: FloatArray,
    train_end: int,
    origins: np.ndarray,
    horizon: int,
) -> tuple[FloatArray, FloatArray]:
    if name == "croston-sba":
        model = models.CrostonSBA()
    elif name == "adida":
        model = models.ADIDA()
    else:
        model = models.TSB(alpha_d=0.1, alpha_p=0.1)
    start = max(0, train_end - INTERMITTENT_WINDOW_STEPS)
    in_sample = model.forecast(y=y[start:train_end], h=1, fitted=True)["fitted"]
    errors = y[start:train_end] - np.asarray(in_sample, dtype=np.float64)
    errors = errors[np.isfinite(errors)]
    offset = float(np.quantile(errors, 0.9)) if errors.size else 0.0
    offset = offset if math.isfinite(offset) else 0.0
    point = np.empty((origins.size, horizon))
    for position, origin in enumerate(origins):
        origin = int(origin)
        window = y[max(0, origin - INTERMITTENT_WINDOW_STEPS) : origin]
        point[position] = model.forecast(y=window, h=horizon)["mean"]
    return point, point + offset
