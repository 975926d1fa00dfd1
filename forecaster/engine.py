"""``AutoForecaster``: the forecaster the daemon, the simulator and the CLI drive.

Owns: the in-memory history of every model (a ring buffer, default 14 days); a set of vectorised
candidate point models (naive, robust medians, exponential smoothing at five speeds, mean
reversion to the last hour's or four hours' mean at a fitted rate, seasonal naive
hourly/daily/weekly, seasonal delta daily/weekly and multi-seasonal, intermittent demand, a
pooled gradient-boosted quantile model, and two loss-weighted combinations of the best of them:
one weighted on the selection loss, one on absolute error); rolling-origin evaluation of every
candidate on every series as the actuals arrive; per-series selection on the pinball loss at the
planning quantile (the mean on its own absolute error, preferring the absolute-error combination
unless one model is ``point_margin`` better);
conformal quantiles from the same residuals with an adaptive width that keeps the planning
quantile calibrated; and P(active) per step from idle-time hazards (sparse series) or the
forecast (busy ones).

Cost: every call is vectorised across series. The heavy part, a refit (the GBM fit plus a
rolling-origin warm-up over the last day that seeds selection and calibration), starts when
history first allows it and again every ``refit_interval_s`` of observed time, and its origins are
evaluated a few per call (``refit_series_origins_per_call``), so no single call pays for it all.

Must not: do I/O, read the clock (time comes from the batches), or return NaN.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from numpy.typing import NDArray

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.history import BLOCK_ROWS, HistoryBuffer
from forecaster.models import intermittent, naive, reverting, seasonal
from forecaster.models.base import HistoryView, IntArray, PointModel, RowSubset
from forecaster.models.conformal import STRATA, ResidualModel, stratum
from forecaster.models.gbm import Calendar, GradientBoostedQuantile
from forecaster.selection import Selector
from forecaster.types import FloatArray, Forecast, SeriesBatch, forecasts_from_arrays

DAY_S = 86400.0
CHUNK_ROWS = 4 * BLOCK_ROWS
"""Series evaluated together by the point models (see ``AutoForecaster._points_and_estimate``)."""
ENSEMBLE_SIZE = 8
ENSEMBLE_POWER = 4.0
GBM_NAME = "gbm-quantile"
OUT_RATE = 0.02
LEVEL_MODELS = frozenset(
    {"naive", "median-3", "median-5", "ses-1m", "ses-3m", "ses-15m", "ses-60m", "ses-360m"}
)
WEEK_S = 7 * DAY_S
HOUR_S = 3600.0
REVERT_MINUTES = (60, 240)
"""Mean windows of the mean-reverting candidates (one each), in minutes of observed time."""
REVERT_FIT_S = 6 * HOUR_S
"""History their decay is fitted on (clamped to 144..720 steps)."""
REVERT_MIN_FIT_STEPS = 60
"""Steps of fit beyond the mean window a series needs before a mean-reverting candidate is
eligible (or the whole fit span, if shorter)."""


ENSEMBLE = "ensemble"
"""The combination weighted on the selection loss: its quantiles serve the planner."""
ENSEMBLE_POINT = "ensemble-point"
"""The combination weighted on the point loss (absolute error): it serves ``Forecast.mean``."""
COMBINATIONS = (ENSEMBLE, ENSEMBLE_POINT)
"""Candidates computed from the point models' forecasts (see ``AutoForecaster._points``)."""


@dataclass(slots=True)
class OriginLookups:
    """History lookups that the point models evaluated at one origin share: the seasonal lag parts
    and the mean-reverting block. :meth:`Candidates.predict` makes one for each call and drops it,
    so nothing computed from one origin's history (or from history a later batch overwrote) is
    read again."""

    lags: seasonal.LagCache = field(default_factory=dict)
    blocks: reverting.BlockCache = field(default_factory=dict)
    intermittent: dict[tuple[int, int, int], intermittent.IntermittentEstimate] = field(
        default_factory=dict
    )
    """The intermittent estimate per ``(window, max_idle, horizon)``: the engine reads it again
    for P(active) at the forecast origin."""


SharedPointModel = Callable[[HistoryView, int, int, OriginLookups], FloatArray]
"""A :data:`forecaster.models.base.PointModel` that may share the lookups of its origin."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A named point model and the history (in steps) a series needs before it is trusted."""

    name: str
    predict: SharedPointModel
    min_history_steps: int

    @classmethod
    def alone(cls, name: str, predict: PointModel, min_history_steps: int) -> Candidate:
        """A candidate that shares no lookups with the others (e.g. the pooled GBM)."""

        def shared(history: HistoryView, end: int, horizon: int, _: OriginLookups) -> FloatArray:
            return predict(history, end, horizon)

        return cls(name, shared, min_history_steps)


@dataclass(frozen=True, slots=True)
class Candidates:
    """Every candidate the engine scores, by name, in preference order (used without evidence).

    ``models`` are point models evaluated on history (:meth:`predict`); the :data:`COMBINATIONS`
    follow them and are computed by the engine from the models' forecasts. Every per-candidate
    array the engine keeps has one row per entry of :attr:`names`, in that order.
    """

    models: tuple[Candidate, ...]

    def __post_init__(self) -> None:
        names = [candidate.name for candidate in self.models]
        if len(set(names)) != len(names) or set(names) & set(COMBINATIONS):
            raise InvalidInput(f"candidate names must be unique and not {COMBINATIONS}: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        """The models' names, then the combinations'."""
        return (*(candidate.name for candidate in self.models), *COMBINATIONS)

    @property
    def min_history_steps(self) -> tuple[int, ...]:
        """Per name: the steps of history a series needs (1 for a combination)."""
        return (*(c.min_history_steps for c in self.models), *(1 for _ in COMBINATIONS))

    def index(self, name: str) -> int:
        """The row of ``name`` in every per-candidate array."""
        return self.names.index(name)

    def plus(self, candidate: Candidate) -> Candidates:
        """These candidates with ``candidate`` after the other models (before the combinations)."""
        return Candidates((*self.models, candidate))

    def predict(
        self, history: HistoryView, end: int, horizon: int, lookups: OriginLookups | None = None
    ) -> FloatArray:
        """Every model's point forecasts ``(models, series, horizon)`` as of ``end``;
        ``lookups`` (fresh for each origin and set of series) is filled as they are computed."""
        lookups = OriginLookups() if lookups is None else lookups
        out: FloatArray = np.stack(
            [candidate.predict(history, end, horizon, lookups) for candidate in self.models]
        )
        return out


def default_candidates(step_s: float, *, horizon_steps: int) -> Candidates:
    """The candidate point models for a step grid, in preference order (used without evidence).

    Seasonal models are only offered when their lag exceeds the horizon plus the smoothing radius,
    and a series only becomes eligible for one once it has the history it needs.
    """
    day = round(DAY_S / step_s)
    week = round(WEEK_S / step_s)
    hour = round(HOUR_S / step_s)
    short = max(1, round(300 / step_s))
    radius = max(0, round(120 / step_s))
    reach = horizon_steps + radius + 1
    out: list[Candidate] = []
    if day > reach:
        out.append(
            Candidate(
                "multi-seasonal",
                partial(
                    _delta,
                    lags=(day, 2 * day, 3 * day, week, 2 * week),
                    radius=radius,
                    window=short,
                ),
                day + short,
            )
        )
        out.append(
            Candidate(
                "seasonal-delta-daily",
                partial(_delta, lags=(day, 2 * day, 3 * day), radius=radius, window=short),
                day + short,
            )
        )
        out.append(
            Candidate(
                "seasonal-ratio-daily",
                partial(
                    _delta,
                    lags=(day, 2 * day, 3 * day),
                    radius=radius,
                    window=short,
                    multiplicative=True,
                ),
                day + short,
            )
        )
    if week > reach:
        out.append(
            Candidate(
                "seasonal-delta-weekly",
                partial(_delta, lags=(week, 2 * week), radius=radius, window=short),
                week + short,
            )
        )
    # Robust levels first: on a flat series they tie with naive on every scored step until a
    # one-step dip, which naive would then repeat over the whole horizon (ties go to the first).
    out.append(Candidate.alone("median-5", partial(_median, window=5), 1))
    out.append(Candidate.alone("median-3", partial(_median, window=3), 1))
    out.append(Candidate.alone("naive", partial(_level, window=1), 1))
    # Exponential smoothing levels at five speeds, in time units (1-min and 10-min data alike).
    for minutes in (1, 3, 15, 60, 360):
        alpha = min(0.9, 1.0 - math.exp(-step_s / (60.0 * minutes)))
        out.append(Candidate.alone(f"ses-{minutes}m", partial(_ses, alpha=alpha), 1))
        if minutes <= 3:
            robust = partial(_ses, alpha=alpha, robust=True)
            out.append(Candidate.alone(f"robust-ses-{minutes}m", robust, 1))
    # Mean-reverting levels: the newest step's deviation from the mean of the last hour or
    # four, decaying at the rate measured on the series' own history. Both read one block of
    # history per origin (shared through ``OriginLookups.blocks``).
    fit = min(720, max(144, round(REVERT_FIT_S / step_s)))
    windows = {minutes: max(2, round(60.0 * minutes / step_s)) for minutes in REVERT_MINUTES}
    span = fit + max(windows.values()) - 1
    for minutes, window in windows.items():
        revert = partial(_revert, mean_window=window, fit_steps=fit, span=span)
        need = min(window + REVERT_MIN_FIT_STEPS, fit)
        out.append(Candidate(f"revert-{minutes}m", revert, need))
    if hour >= 2:
        out.append(Candidate.alone("seasonal-naive-hourly", partial(_snaive, lag=hour), hour))
    out.append(Candidate.alone("seasonal-naive-daily", partial(_snaive, lag=day), day))
    out.append(Candidate.alone("seasonal-naive-weekly", partial(_snaive, lag=week), week))
    out.append(
        Candidate(
            "intermittent",
            partial(_intermittent, window=min(day, max(60, 6 * hour)), max_idle=max(4, 2 * hour)),
            1,
        )
    )
    return Candidates(tuple(out))


def _level(history: HistoryView, end: int, horizon: int, *, window: int) -> FloatArray:
    return naive.level(history, end, horizon, window=window)


def _median(history: HistoryView, end: int, horizon: int, *, window: int) -> FloatArray:
    return naive.median_level(history, end, horizon, window=window)


def _ses(
    history: HistoryView, end: int, horizon: int, *, alpha: float, robust: bool = False
) -> FloatArray:
    return naive.smoothed_level(history, end, horizon, alpha=alpha, robust=robust)


def _revert(
    history: HistoryView,
    end: int,
    horizon: int,
    lookups: OriginLookups,
    *,
    mean_window: int,
    fit_steps: int,
    span: int,
) -> FloatArray:
    return reverting.mean_reverting(
        history,
        end,
        horizon,
        mean_window=mean_window,
        fit_steps=fit_steps,
        span=span,
        cache=lookups.blocks,
    )


def _snaive(history: HistoryView, end: int, horizon: int, *, lag: int) -> FloatArray:
    return naive.seasonal_naive(history, end, horizon, lag=lag)


def _delta(
    history: HistoryView,
    end: int,
    horizon: int,
    lookups: OriginLookups,
    *,
    lags: tuple[int, ...],
    radius: int,
    window: int,
    multiplicative: bool = False,
) -> FloatArray:
    return seasonal.seasonal_delta(
        history,
        end,
        horizon,
        lags=lags,
        radius=radius,
        level_window=window,
        multiplicative=multiplicative,
        cache=lookups.lags,
    )


def intermittent_window(step_s: float) -> int:
    """Steps of history the intermittent estimates read: six hours, within 60 steps .. a day."""
    return min(round(DAY_S / step_s), max(60, round(6 * HOUR_S / step_s)))


def _intermittent(
    history: HistoryView,
    end: int,
    horizon: int,
    lookups: OriginLookups,
    *,
    window: int,
    max_idle: int,
) -> FloatArray:
    estimate = intermittent.estimate(history, end, horizon, window=window, max_idle=max_idle)
    lookups.intermittent[(window, max_idle, horizon)] = estimate
    return intermittent.tsb_point(estimate)


@dataclass(slots=True)
class _Pending:
    """Forecasts of every candidate made at one origin, waiting for their actuals.

    Candidates whose forecasts are flat over the horizon for every series (the level models:
    naive, medians, exponential smoothing), or that no series may use yet (read as NaN), are
    kept as one float64 value per series with the scale and residual quantiles they were made
    with, and expanded when scored: the same numbers as storing them step by step (the
    expansion repeats the same float64 arithmetic), at a thirtieth of the memory. At 100,000
    series a pending origin is 0.29 GB instead of 0.55.
    """

    origin: int
    models: int
    dense: NDArray[np.int64]  # candidates kept step by step
    points: NDArray[np.float32]  # (dense, models, horizon); NaN where ineligible
    upper: NDArray[np.float32]  # the planning-quantile forecast, same shape
    flat: NDArray[np.int64]  # candidates kept flat
    flat_points: FloatArray  # (flat, models)
    flat_scale: FloatArray  # (flat, models)
    flat_offsets: FloatArray  # (flat, strata, horizon): planning-quantile residual offsets
    flat_eligible: NDArray[np.bool_]  # (flat, models)
    scale: NDArray[np.float32]  # (candidates, models)
    strata: NDArray[np.int64]  # (models,)
    final_upper: NDArray[np.float32] | None = None  # (models, horizon): the output's q forecast

    def block(self, rows: slice, steps: IntArray) -> tuple[FloatArray, FloatArray]:
        """Point and planning-quantile forecasts ``(candidates, rows, len(steps))`` (float64 of
        the float32 kept) of series ``rows`` (within the ``models`` it was made for)."""
        count = len(self.dense) + len(self.flat)
        size = rows.stop - rows.start
        points = np.empty((count, size, steps.size))
        upper = np.empty((count, size, steps.size))
        points[self.dense] = self.points[:, rows][:, :, steps]
        upper[self.dense] = self.upper[:, rows][:, :, steps]
        if len(self.flat):
            current = self.flat_points[:, rows]
            offsets = self.flat_offsets[:, self.strata[rows], :][:, :, steps]
            mask = self.flat_eligible[:, rows, None]
            high = np.maximum(current[:, :, None] + self.flat_scale[:, rows, None] * offsets, 0.0)
            points[self.flat] = np.where(mask[:, :, 0], current, np.nan).astype(np.float32)[
                :, :, None
            ]
            upper[self.flat] = np.where(mask, high, np.nan).astype(np.float32)
        return points, upper


@dataclass(slots=True)
class EngineStats:
    """Counters for metrics and benchmarks."""

    cycles: int = 0
    refits: int = 0
    last_refit_end: int = -1
    chosen: dict[str, int] = field(default_factory=dict)


class AutoForecaster:
    """Per-model quantile forecasts with automatic per-series model choice.

    Implements :class:`forecaster.types.ForecastEngine`. ``observe`` folds a batch into history
    (cheap); ``forecast`` scores earlier forecasts against the new actuals, picks a model per
    series and returns calibrated quantiles for every known model. ``step_s`` must match the
    batches' step.

    ``ensemble_margin``: the share by which a single candidate's selection loss must beat the
    ``ensemble`` combination's for its quantiles to be used instead; ``point_margin``: the same
    for the mean, on absolute error, against ``ensemble-point``. Both in ``[0, 1)``.
    """

    def __init__(
        self,
        step_s: float = 60.0,
        *,
        history_window_s: float = 14 * DAY_S,
        planning_quantile: float = 0.9,
        score_horizon_s: float = 1800.0,
        score_every_s: float | None = None,
        warmup_origins: int = 48,
        refit_interval_s: float = DAY_S,
        seed: int = 0,
        ensemble_margin: float = 0.3,
        point_margin: float = 0.1,
        refit_series_origins_per_call: int = 12_000,
    ) -> None:
        if step_s <= 0:
            raise InvalidInput(f"step_s must be > 0, got {step_s}")
        if not 0 < planning_quantile < 1:
            raise InvalidInput(f"planning_quantile must be in (0, 1), got {planning_quantile}")
        for name, margin in (("ensemble_margin", ensemble_margin), ("point_margin", point_margin)):
            if not 0 <= margin < 1:
                raise InvalidInput(f"{name} must be in [0, 1), got {margin}")
        self.step_s = float(step_s)
        self.ensemble_margin = ensemble_margin
        self.point_margin = point_margin
        self.refit_series_origins_per_call = refit_series_origins_per_call
        self._refit_queue: deque[int] = deque()
        self.planning_quantile = planning_quantile
        capacity = max(16, math.ceil(history_window_s / step_s))
        self.history = HistoryBuffer(step_s=step_s, capacity_steps=capacity)
        self.score_horizon = max(1, math.ceil(score_horizon_s / step_s))
        every = score_every_s if score_every_s is not None else max(step_s, score_horizon_s / 6)
        self.score_every = max(1, round(every / step_s))
        self.warmup_origins = warmup_origins
        self.refit_every = max(1, round(refit_interval_s / step_s))
        self.gbm = GradientBoostedQuantile(seed=seed)
        # The pooled GBM is trained at refits (see refit); it is the last point model.
        self.candidates = default_candidates(step_s, horizon_steps=self.score_horizon).plus(
            Candidate.alone(GBM_NAME, self.gbm.predict, 1)
        )
        self._bases = len(self.candidates.models)
        self._ensemble = self.candidates.index(ENSEMBLE)
        self._point_ensemble = self.candidates.index(ENSEMBLE_POINT)
        count = len(self.candidates.names)
        self.residuals = ResidualModel(candidates=count, horizon=self.score_horizon, seed=seed)
        self.selector = Selector(candidates=count, level=planning_quantile)
        self._pending: deque[_Pending] = deque()
        self._last_pending_origin = -(10**12)
        self.stats = EngineStats()
        self._last: dict[ModelId, Forecast] = {}
        self._out_log_width = np.zeros(STRATA)
        self._max_idle = max(4, round(2 * HOUR_S / self.step_s))

    # -- ForecastEngine ---------------------------------------------------------------------

    def observe(self, batch: SeriesBatch) -> None:
        """Fold in ``batch`` (on this engine's step grid; overlapping steps: later values win)."""
        self.history.extend(batch)
        self.residuals.grow(self.history.size)
        self.selector.grow(self.history.size)

    def forecast(
        self, *, horizon_steps: int, quantiles: tuple[float, ...]
    ) -> dict[ModelId, Forecast]:
        """One forecast per known model for ``horizon_steps`` steps after the last observed step."""
        if horizon_steps < 1:
            raise InvalidInput(f"horizon_steps must be >= 1, got {horizon_steps}")
        levels = tuple(float(q) for q in quantiles)
        if list(levels) != sorted(set(levels)) or not all(0 < q < 1 for q in levels):
            raise InvalidInput(f"quantile levels must be increasing in (0, 1): {quantiles}")
        if self.history.size == 0:
            return {}
        self._score_pending()
        if self._refit_due():
            self.start_refit()
        self._continue_refit(self._refit_origins_per_call())
        result = self._predict(horizon_steps, levels)
        self.stats.cycles += 1
        self._last = result
        return result

    # -- staleness ---------------------------------------------------------------------------

    def last_forecasts(self, *, stale: bool = True) -> dict[ModelId, Forecast]:
        """The forecasts of the latest successful cycle, marked ``stale`` (for a failed source)."""
        if not stale:
            return dict(self._last)
        return {model: _as_stale(forecast) for model, forecast in self._last.items()}

    # -- refit -------------------------------------------------------------------------------

    def _refit_due(self) -> bool:
        end = self.history.end
        if end - self.history.start < self.score_horizon + 2:
            return False
        if self.stats.last_refit_end < 0:
            return True
        return end - self.stats.last_refit_end >= self.refit_every

    def refit(self) -> None:
        """Run a whole refit now (see :meth:`start_refit`), not spread over calls."""
        self.start_refit()
        self._continue_refit(len(self._refit_queue))

    def start_refit(self) -> None:
        """Start a refit: train the pooled GBM, and queue a rolling-origin evaluation of every
        candidate over recent history (the last day, or what there is), which seeds selection and
        calibration. The queued origins are evaluated a few per ``forecast`` call (about
        ``refit_series_origins_per_call / models`` of them), so no call pays for all of it."""
        end = self.history.end
        horizon = self.score_horizon
        usable = end - self.history.start - horizon - 1
        self.stats.refits += 1
        self.stats.last_refit_end = end
        if usable <= 0:
            return
        span = min(usable, max(round(DAY_S / self.step_s), 4 * horizon))
        count = max(1, min(self.warmup_origins, span))
        stride = max(1, span // count)
        origins = [end - horizon - j * stride for j in range(count)]
        self._refit_queue = deque(o for o in origins[::-1] if o > self.history.start)
        self._fit_gbm(end - span - horizon, horizon)

    def _refit_origins_per_call(self) -> int:
        return max(1, self.refit_series_origins_per_call // max(1, self.history.size))

    def _continue_refit(self, origins: int) -> None:
        horizon = self.score_horizon
        end = self.history.end
        steps = np.arange(horizon, dtype=np.int64)
        for _ in range(min(origins, len(self._refit_queue))):
            origin = self._refit_queue.popleft()
            if origin + horizon > end or origin <= self.history.start:
                continue
            pending = self._make_pending(origin)
            actual = self.history.gather(steps + origin - end, end=end)
            self._score(pending, actual, steps)

    def _fit_gbm(self, last_origin: int, horizon: int) -> None:
        """Train the pooled GBM on origins before the evaluation span (so it is scored
        out-of-sample); skipped when there is less than a day of history before that."""
        first = self.history.start + 60
        room = last_origin - first
        if room < round(DAY_S / self.step_s) or self.history.origin_s is None:
            return
        count = min(self.warmup_origins, room)
        stride = max(1, room // count)
        origins = [last_origin - j * stride for j in range(count)]
        self.gbm.fit(
            self.history,
            origins,
            horizon,
            Calendar(origin_s=self.history.origin_s, step_s=self.step_s),
        )

    # -- internals ---------------------------------------------------------------------------

    def _eligible(self, end: int) -> NDArray[np.bool_]:
        have = self.history.history_steps(end=end)
        need = np.asarray(self.candidates.min_history_steps, dtype=np.int64)
        out: NDArray[np.bool_] = have[None, :] >= need[:, None]
        if not self.gbm.fitted:
            out[self.candidates.index(GBM_NAME)] = False
        return out

    def _points(self, end: int, horizon: int) -> FloatArray:
        """Point forecasts of every candidate ``(candidates, models, horizon)`` as of ``end``.

        The :data:`COMBINATIONS` combine the best ``ENSEMBLE_SIZE`` point models of each series
        (weights ``(best loss / loss) ** ENSEMBLE_POWER``): combinations are more robust to a
        change of regime than any single pick. ``ensemble`` ranks and weights them on the
        selection loss (the planning quantile's pinball plus the point's), ``ensemble-point`` on
        the point loss alone (absolute error): the quantiles serve the planner, the mean people
        and error metrics, and the best combination for one is not the best for the other.
        """
        return self._points_and_estimate(end, horizon)[0]

    def _points_and_estimate(
        self, end: int, horizon: int
    ) -> tuple[FloatArray, intermittent.IntermittentEstimate | None]:
        """:meth:`_points`, and the intermittent candidate's estimate at ``end`` for the
        window and idle cap :meth:`_predict` reads (None if no candidate computed that one).

        Series are independent here, so they are evaluated ``CHUNK_ROWS`` at a time: the
        temporaries of a chunk (a 720-step window of 4,096 series is 24 MB) stay small enough to
        be reused rather than mapped and faulted in afresh, and the peak memory of a call no
        longer grows with the fleet. The numbers are those of one pass over all series.
        """
        n = self.history.size
        bases = self._bases
        eligible = self._eligible(end)[:bases]
        level_rows = [i for i, c in enumerate(self.candidates.models) if c.name in LEVEL_MODELS]
        out: FloatArray = np.empty((len(self.candidates.names), n, horizon))
        key = (intermittent_window(self.step_s), self._max_idle, horizon)
        parts: list[intermittent.IntermittentEstimate] = []
        for first in range(0, n, CHUNK_ROWS):
            rows = slice(first, min(n, first + CHUNK_ROWS))
            view = RowSubset(self.history, np.arange(rows.start, rows.stop, dtype=np.int64))
            lookups = OriginLookups()
            base = self.candidates.predict(view, end, horizon, lookups)
            base = np.where(np.isfinite(base), np.maximum(base, 0.0), 0.0)
            trusted = eligible[:, rows] & (self.selector.weight[:bases, rows] >= 10.0)
            # Without evidence: the mean of the eligible level models (naive and the SES speeds).
            fallback = trusted.any(axis=0) == 0
            plain = base[level_rows].mean(axis=0)
            out[:bases, rows] = base
            for index, loss in enumerate(
                (self.selector.loss[:bases, rows], self.selector.point_loss[:bases, rows])
            ):
                combined = _combine(base, np.where(trusted, loss, np.inf))
                out[bases + index, rows] = np.where(fallback[:, None], plain, combined)
            if key in lookups.intermittent:
                parts.append(lookups.intermittent[key])
        if n == 0 or len(parts) * CHUNK_ROWS < n:
            return out, None
        return out, intermittent.IntermittentEstimate(
            p=np.concatenate([part.p for part in parts]),
            size=np.concatenate([part.size for part in parts]),
            hazard=np.concatenate([part.hazard for part in parts]),
            zero_share=np.concatenate([part.zero_share for part in parts]),
        )

    def _recent(self, end: int) -> FloatArray:
        """The recent (30 min) level per series: drives the fallback scale and the strata."""
        return naive.recent_level(self.history, end, max(2, round(1800 / self.step_s)))

    @staticmethod
    def _fallback_scale(level: FloatArray) -> FloatArray:
        # Poisson-like counts: mean |error| ~ 0.8 * sqrt(level).
        out: FloatArray = 0.8 * np.sqrt(level) + 0.05
        return out

    def _make_pending(self, origin: int) -> _Pending:
        horizon = self.score_horizon
        points = self._points(origin, horizon)
        eligible = self._eligible(origin)
        level = self._recent(origin)
        scale = self.residuals.scale(self._fallback_scale(level))
        return self._scored_pending(points, eligible, scale, stratum(level), origin)

    def _score(self, pending: _Pending, actual: FloatArray, steps: IntArray) -> None:
        """Score ``pending`` at horizon ``steps`` against ``actual (models, len(steps))``.

        The per-series updates (selection losses, residual scales) run ``CHUNK_ROWS`` series
        at a time; the pooled ones (residual pools, adaptive widths) then see every series at
        once, as before: the same numbers with float64 temporaries of one chunk, not the fleet.
        Series that appeared after the forecasts were made score nothing (NaN).
        """
        n = pending.models
        total = self.history.size
        candidates = len(self.candidates.names)
        normalised = np.empty((candidates, total, steps.size), dtype=np.float32)
        scored = np.empty((candidates, total, steps.size), dtype=np.bool_)
        missed = np.empty((candidates, total, steps.size), dtype=np.bool_)
        for first in range(0, total, CHUNK_ROWS):
            rows = slice(first, min(total, first + CHUNK_ROWS))
            held = min(n, rows.stop) - rows.start
            points = np.full((candidates, rows.stop - rows.start, steps.size), np.nan)
            upper = np.full_like(points, np.nan)
            scale = np.ones((candidates, rows.stop - rows.start))
            if held > 0:
                made = slice(rows.start, rows.start + held)
                points[:, :held], upper[:, :held] = pending.block(made, steps)
                scale[:, :held] = pending.scale[:, made]
            actual_rows = actual[rows]
            self.selector.update(actual_rows, points, upper, rows=rows)
            ok = np.isfinite(upper) & np.isfinite(actual_rows)[None, :, :]
            scored[:, rows] = ok
            missed[:, rows] = np.where(ok, actual_rows[None, :, :] > upper + 1e-9, False)
            residuals = actual_rows[None, :, :] - points
            self.residuals.update_scales(residuals, rows=rows)
            normalised[:, rows] = (residuals / scale[:, :, None]).astype(np.float32)
        strata = pending.strata
        if n < total:
            strata = np.concatenate([strata, np.zeros(total - n, dtype=np.int64)])
        self.residuals.adapt_width(missed, scored, strata, level=self.planning_quantile)
        self.residuals.update_pools(normalised, steps, strata)
        if pending.final_upper is not None:
            final = pending.final_upper[:, steps].astype(np.float64)
            actual_rows = actual[:n]
            ok = np.isfinite(actual_rows)
            miss = ok & (actual_rows > final + 1e-9)
            for group in np.unique(pending.strata):
                members = pending.strata == group
                count = int(ok[members].sum())
                step = OUT_RATE * (int(miss[members].sum()) - (1 - self.planning_quantile) * count)
                self._out_log_width[group] = np.clip(
                    self._out_log_width[group] + np.clip(step, -0.2, 0.2),
                    np.log(0.4),
                    np.log(3.0),
                )

    def _score_pending(self) -> None:
        """Score the pending forecasts whose whole horizon has been observed (one call each:
        scoring step by step would cost a call per pending per cycle for the same evidence)."""
        end = self.history.end
        keep: deque[_Pending] = deque()
        for pending in self._pending:
            if end - pending.origin < self.score_horizon:
                keep.append(pending)
                continue
            if pending.origin + self.score_horizon <= self.history.start:
                continue  # its actuals already left the history window
            steps = np.arange(self.score_horizon, dtype=np.int64)
            actual = self.history.gather(steps + pending.origin - end, end=end)
            self._score(pending, actual, steps)
        self._pending = keep

    def _predict(self, horizon: int, levels: tuple[float, ...]) -> dict[ModelId, Forecast]:
        end = self.history.end
        reach = max(horizon, self.score_horizon)
        points, candidate_estimate = self._points_and_estimate(end, reach)
        eligible = self._eligible(end)
        chosen = self.selector.choose(
            eligible, preferred=self._ensemble, margin=self.ensemble_margin
        )
        level = self._recent(end)
        strata = stratum(level)
        scale = self.residuals.scale(self._fallback_scale(level))

        n = self.history.size
        rows = np.arange(n)
        point = points[chosen, rows, :]  # (n, reach)
        wanted = tuple(sorted({*levels, 0.5, self.planning_quantile}))
        offsets = self.residuals.quantiles(wanted)  # (C, strata, L, Hs)
        step_index = np.minimum(np.arange(reach), self.score_horizon - 1)
        chosen_offsets = offsets[chosen, strata][:, :, step_index]  # (n, L, reach)
        table = point[:, None, :] + scale[chosen, rows][:, None, None] * chosen_offsets
        # Output-level adaptive width: calibrates the forecast actually returned (after
        # selection, which favours candidates that were lucky lately) at the planning quantile.
        median = table[:, wanted.index(0.5)][:, None, :]
        width = np.exp(self._out_log_width[strata])[:, None, None]
        upper = (np.asarray(wanted) > 0.5)[None, :, None]
        table = np.where(upper, median + width * (table - median), table)
        table = np.maximum.accumulate(np.maximum(table, 0.0), axis=1)
        if end - self._last_pending_origin >= self.score_every:
            pending = self._scored_pending(points, eligible, scale, strata, end)
            final = table[:, wanted.index(self.planning_quantile), : self.score_horizon]
            pending.final_upper = final.astype(np.float32)
            self._pending.append(pending)
            self._last_pending_origin = end
        values = table[:, [wanted.index(q) for q in levels], :horizon]
        # The mean comes from the candidate with the best point loss (absolute error), which
        # may differ from the one whose quantiles serve the planner.
        point_choice = self.selector.choose(
            eligible, preferred=self._point_ensemble, margin=self.point_margin, point=True
        )
        point = points[point_choice, rows, :horizon]
        mean = point

        if candidate_estimate is not None:
            # The candidate's estimate at this origin, over ``reach`` steps: each step's hazard
            # depends on that step alone, so its first ``horizon`` are this call's.
            estimate = replace(candidate_estimate, hazard=candidate_estimate.hazard[:, :horizon])
        else:
            estimate = intermittent.estimate(
                self.history,
                end,
                horizon,
                window=intermittent_window(self.step_s),
                max_idle=self._max_idle,
            )
        poisson = 1.0 - np.exp(-mean)
        sparse = estimate.zero_share[:, None] >= 0.3
        # A sparse series' idle-time hazard knows nothing of a seasonal burst that the chosen
        # point model does forecast (a model idle all day but busy every day at noon): take the
        # larger of the two, so a step forecast to hold hundreds of requests is never "idle".
        hazard = np.maximum(estimate.hazard, poisson)
        p_active = np.clip(np.where(sparse, hazard, poisson), 0.0, 1.0)

        names = self.candidates.names
        methods = [names[int(index)] for index in chosen]
        counts: dict[str, int] = {}
        for method in methods:
            counts[method] = counts.get(method, 0) + 1
        out = forecasts_from_arrays(
            self.history.models,
            start_s=self.history.end_s,
            step_s=self.step_s,
            mean=np.ascontiguousarray(mean),
            quantiles=levels,
            values=np.ascontiguousarray(values),
            p_active=np.ascontiguousarray(p_active),
            methods=methods,
        )
        self.stats.chosen = counts
        return out

    @staticmethod
    def _flat_candidates(current: FloatArray) -> NDArray[np.bool_]:
        """Per candidate: whether ``current (candidates, models, horizon)`` is flat over the
        horizon for every series (kept as one value per series while pending)."""
        out: NDArray[np.bool_] = np.all(current == current[:, :, :1], axis=(1, 2))
        return out

    def _scored_pending(
        self,
        points: FloatArray,
        eligible: NDArray[np.bool_],
        scale: FloatArray,
        strata: NDArray[np.int64],
        end: int,
    ) -> _Pending:
        horizon = self.score_horizon
        n = points.shape[1]
        current = points[:, :, :horizon]
        offsets = self.residuals.quantiles((self.planning_quantile,))[:, :, 0, :]  # (C, S, H)
        # A candidate no series may use yet (the GBM before its first fit) is NaN throughout.
        flat_rows = self._flat_candidates(current) | ~eligible.any(axis=1)
        flat = np.flatnonzero(flat_rows)
        dense = np.flatnonzero(~flat_rows)
        kept = np.empty((dense.size, n, horizon), dtype=np.float32)
        upper = np.empty((dense.size, n, horizon), dtype=np.float32)
        for first in range(0, n, CHUNK_ROWS):
            rows = slice(first, min(n, first + CHUNK_ROWS))
            part = current[dense, rows]
            high = part + scale[dense, rows][:, :, None] * offsets[dense][:, strata[rows], :]
            mask = eligible[dense, rows][:, :, None]
            kept[:, rows] = np.where(mask, part, np.nan)
            upper[:, rows] = np.where(mask, np.maximum(high, 0.0), np.nan)
        return _Pending(
            origin=end,
            models=self.history.size,
            dense=dense,
            points=kept,
            upper=upper,
            flat=flat,
            flat_points=current[flat, :, 0],
            flat_scale=scale[flat],
            flat_offsets=offsets[flat],
            flat_eligible=eligible[flat],
            scale=scale.astype(np.float32),
            strata=strata,
        )


def _combine(base: FloatArray, loss: FloatArray) -> FloatArray:
    """Per series, the best ``ENSEMBLE_SIZE`` of ``base (candidates, models, horizon)`` by
    ``loss (candidates, models)`` (``inf``: not usable), weighted ``(best / loss) ** POWER``."""
    rank = np.argsort(loss, axis=0)[:ENSEMBLE_SIZE]  # (k, n)
    rows = np.arange(base.shape[1])
    chosen_loss = loss[rank, rows[None, :]]
    finite = np.isfinite(chosen_loss)
    safe = np.where(finite, np.maximum(chosen_loss, 1e-9), 1.0)
    weights = np.where(finite, (safe[0][None, :] / safe) ** ENSEMBLE_POWER, 0.0)
    combined = np.einsum("kn,knh->nh", weights, base[rank, rows[None, :], :])
    out: FloatArray = combined / np.maximum(weights.sum(axis=0), 1e-12)[:, None]
    return out


def _as_stale(forecast: Forecast) -> Forecast:
    return Forecast(
        model=forecast.model,
        start_s=forecast.start_s,
        step_s=forecast.step_s,
        mean=forecast.mean,
        quantiles=forecast.quantiles,
        values=forecast.values,
        p_active=forecast.p_active,
        method=forecast.method,
        stale=True,
        notes=forecast.notes,
    )
