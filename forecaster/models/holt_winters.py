"""Holt-Winters / ETS with additive errors: parameters from statsmodels, states filtered in numpy.

statsmodels fits one series at a time (``ExponentialSmoothing`` for classic additive Holt-Winters,
as the predictive horizontal pod autoscaler uses; ``ETSModel`` for damped-trend ETS). Running its
recursion per origin would be slow, so the fitted smoothing parameters and initial states are
converted to the error-correction form and filtered here, vectorised across series:

    yhat_t = l + phi*b + s_{t-m};  e = y_t - yhat_t
    l' = l + phi*b + alpha*e;  b' = phi*b + beta*e;  s_t = s_{t-m} + gamma*e

(statsmodels' Holt-Winters ``smoothing_trend`` is ``beta/alpha`` in this form.) Missing values
(NaN) skip the update. Must not: do I/O.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from forecaster.types import FloatArray


@dataclass(frozen=True, slots=True)
class EtsParams:
    """Error-correction parameters and initial states for ``n`` series, season length ``m``."""

    alpha: FloatArray
    beta: FloatArray
    gamma: FloatArray
    phi: FloatArray
    level0: FloatArray
    trend0: FloatArray
    season0: FloatArray  # (n, m); column j is s_{j-m}, the seasonal state m-j steps before t=0
    season: int


def fit_holt_winters(y: FloatArray, *, season: int) -> EtsParams:
    """Additive Holt-Winters (additive trend; additive season of ``season`` steps when >= 2).

    Fitted by statsmodels' ``ExponentialSmoothing`` with heuristic initial states; a series too
    short or too flat to fit falls back to fixed smoothing (alpha 0.5, beta 0.05, gamma 0.1).
    """
    values = _clean(y)
    seasonal = season >= 2 and values.size >= 2 * season + 2
    m = season if seasonal else 0
    try:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ExponentialSmoothing(
                values,
                trend="add",
                seasonal="add" if seasonal else None,
                seasonal_periods=m if seasonal else None,
                initialization_method="heuristic" if seasonal else "estimated",
            )
            fit = model.fit(use_brute=False)
        params = fit.params
        alpha = float(params["smoothing_level"])
        beta_hw = float(params["smoothing_trend"])
        gamma = float(params["smoothing_seasonal"]) if seasonal else 0.0
        level0 = float(params["initial_level"])
        trend0 = float(params["initial_trend"])
        season0 = np.asarray(params["initial_seasons"], dtype=np.float64) if seasonal else None
    except (ValueError, np.linalg.LinAlgError, IndexError, KeyError):
        alpha, beta_hw, gamma = 0.5, 0.1, 0.1
        level0, trend0, season0 = float(values[: max(1, m)].mean()), 0.0, None
    if not all(np.isfinite([alpha, beta_hw, gamma, level0, trend0])):
        alpha, beta_hw, gamma = 0.5, 0.1, 0.1
        level0, trend0 = float(values[: max(1, m)].mean()), 0.0
    if season0 is None or not np.all(np.isfinite(season0)):
        season0 = np.zeros(m)
    return EtsParams(
        alpha=np.array([alpha]),
        beta=np.array([alpha * beta_hw]),
        gamma=np.array([gamma]),
        phi=np.array([1.0]),
        level0=np.array([level0]),
        trend0=np.array([trend0]),
        season0=season0[None, :],
        season=m,
    )


def fit_ets(y: FloatArray) -> EtsParams:
    """ETS(A,Ad,N): additive errors, damped additive trend, no season (statsmodels ``ETSModel``).

    Non-seasonal on purpose: fitting ETS seasonal states for a daily cycle of 1-minute data
    (1,440 states) is too slow to be a practical baseline.
    """
    values = _clean(y)
    try:
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ETSModel(values, error="add", trend="add", damped_trend=True).fit(disp=False)
        named = dict(zip(fit.model.param_names, np.asarray(fit.params), strict=True))
        alpha = float(named["smoothing_level"])
        beta = float(named["smoothing_trend"])
        phi = float(named["damping_trend"])
        level0 = float(named["initial_level"])
        trend0 = float(named["initial_trend"])
    except (ValueError, np.linalg.LinAlgError, IndexError, KeyError):
        alpha, beta, phi, level0, trend0 = 0.5, 0.05, 0.98, float(values[:1].mean()), 0.0
    if not all(np.isfinite([alpha, beta, phi, level0, trend0])):
        alpha, beta, phi, level0, trend0 = 0.5, 0.05, 0.98, float(values[:1].mean()), 0.0
    return EtsParams(
        alpha=np.array([alpha]),
        beta=np.array([beta]),
        gamma=np.array([0.0]),
        phi=np.array([phi]),
        level0=np.array([level0]),
        trend0=np.array([trend0]),
        season0=np.zeros((1, 0)),
        season=0,
    )


def stack_params(params: list[EtsParams]) -> EtsParams:
    """Stack per-series parameters (all with the same season length) for vectorised filtering."""
    season = params[0].season
    return EtsParams(
        alpha=np.concatenate([p.alpha for p in params]),
        beta=np.concatenate([p.beta for p in params]),
        gamma=np.concatenate([p.gamma for p in params]),
        phi=np.concatenate([p.phi for p in params]),
        level0=np.concatenate([p.level0 for p in params]),
        trend0=np.concatenate([p.trend0 for p in params]),
        season0=np.concatenate([p.season0 for p in params], axis=0),
        season=season,
    )


@dataclass(frozen=True, slots=True)
class FilteredStates:
    """States after each step: ``level[:, t]``, ``trend[:, t]`` and the seasonal state ``s_t``."""

    level: FloatArray  # (n, T)
    trend: FloatArray  # (n, T)
    season: FloatArray  # (n, T); s_t (zeros when non-seasonal)
    params: EtsParams


def run_filter(y: FloatArray, params: EtsParams) -> FilteredStates:
    """Filter ``y (n, T)`` from the initial states; NaN observations leave the states unchanged."""
    n, steps = y.shape
    m = params.season
    level = params.level0.astype(np.float64).copy()
    trend = params.trend0.astype(np.float64).copy()
    ring = params.season0.T.astype(np.float64).copy() if m else np.zeros((1, n))
    out_level = np.empty((n, steps))
    out_trend = np.empty((n, steps))
    out_season = np.zeros((n, steps))
    alpha, beta, gamma, phi = params.alpha, params.beta, params.gamma, params.phi
    for t in range(steps):
        phase = t % m if m else 0
        previous_season = ring[phase]
        damped = phi * trend
        value = y[:, t]
        error = value - (level + damped + previous_season)
        error = np.where(np.isfinite(error), error, 0.0)
        level = level + damped + alpha * error
        trend = damped + beta * error
        if m:
            ring[phase] = previous_season + gamma * error
            out_season[:, t] = ring[phase]
        out_level[:, t] = level
        out_trend[:, t] = trend
    return FilteredStates(level=out_level, trend=out_trend, season=out_season, params=params)


def forecast_at(states: FilteredStates, origins: np.ndarray, horizon: int) -> FloatArray:
    """Point forecasts ``(n, len(origins), horizon)`` made after observing steps ``< origin``.

    Origins must be >= 1 (at least one step observed) and, when seasonal, >= the season length.
    """
    m = states.params.season
    last = np.asarray(origins, dtype=np.int64) - 1
    level = states.level[:, last][:, :, None]
    trend = states.trend[:, last][:, :, None]
    phi = states.params.phi[:, None, None]
    steps = np.arange(1, horizon + 1)
    damp = np.cumsum(phi ** steps[None, None, :], axis=2)
    out = level + damp * trend
    if m:
        ahead = steps - 1
        source = last[:, None] + 1 + ahead[None, :] - m * (ahead[None, :] // m + 1)
        out = out + states.season[:, source]
    result: FloatArray = out
    return result


def _clean(y: FloatArray) -> FloatArray:
    values = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        finite = np.isfinite(values)
        fill = float(values[finite].mean()) if finite.any() else 0.0
        values = np.where(finite, values, fill)
    return values
