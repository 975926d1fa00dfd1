"""AutoForecaster: the ForecastEngine contract on synthetic series (no NaN, no crossing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.engine import COMBINATIONS, AutoForecaster, Candidate, default_candidates
from forecaster.types import Forecast, ForecastEngine, SeriesBatch
from tests.forecaster.conftest import synthetic_batch

LEVELS = (0.1, 0.5, 0.9)


def _check(forecasts: dict[ModelId, Forecast], horizon: int) -> None:
    for forecast in forecasts.values():
        assert forecast.horizon == horizon
        assert forecast.quantiles == LEVELS
        assert np.all(np.isfinite(forecast.values))
        assert np.all(np.isfinite(forecast.mean))
        assert np.all(np.diff(forecast.values, axis=0) >= -1e-9)
        assert np.all((forecast.p_active >= 0) & (forecast.p_active <= 1))
        assert not forecast.stale


def test_engine_satisfies_the_protocol() -> None:
    engine: ForecastEngine = AutoForecaster(step_s=60)
    assert engine.forecast(horizon_steps=3, quantiles=LEVELS) == {}


def test_forecasts_every_model_from_two_days_of_history(small_batch: SeriesBatch) -> None:
    engine = AutoForecaster(step_s=60)
    engine.observe(small_batch)
    forecasts = engine.forecast(horizon_steps=30, quantiles=LEVELS)
    assert set(forecasts) == set(small_batch.models)
    _check(forecasts, 30)
    first = forecasts[ModelId("model-0")]
    assert first.start_s == small_batch.end_s
    assert first.step_s == 60
    assert engine.stats.refits == 1


def test_incremental_cycles_score_and_keep_forecasting(small_batch: SeriesBatch) -> None:
    engine = AutoForecaster(step_s=60)
    split = small_batch.steps - 120
    engine.observe(
        SeriesBatch(small_batch.models, small_batch.start_s, 60, small_batch.counts[:, :split])
    )
    for start in range(split, small_batch.steps, 5):
        chunk = small_batch.counts[:, start : start + 5]
        engine.observe(SeriesBatch(small_batch.models, small_batch.start_s + start * 60, 60, chunk))
        _check(engine.forecast(horizon_steps=15, quantiles=LEVELS), 15)
    assert engine.stats.cycles == 24
    assert int(engine.selector.weight.max()) > 0


@pytest.mark.parametrize("steps", [1, 2, 5, 50])
def test_short_history_uses_fallbacks_never_nan(steps: int) -> None:
    batch = synthetic_batch(models=2, days=steps / 1440)
    engine = AutoForecaster(step_s=60)
    engine.observe(batch)
    forecasts = engine.forecast(horizon_steps=10, quantiles=LEVELS)
    _check(forecasts, 10)
    for forecast in forecasts.values():
        assert not forecast.method.startswith("seasonal")


def test_all_missing_and_all_zero_series_are_finite() -> None:
    counts = np.vstack(
        [np.full(500, np.nan), np.zeros(500), np.r_[np.full(250, np.nan), np.ones(250)]]
    )
    batch = SeriesBatch((ModelId("nan"), ModelId("zero"), ModelId("gap")), 0.0, 60.0, counts)
    engine = AutoForecaster(step_s=60)
    engine.observe(batch)
    forecasts = engine.forecast(horizon_steps=5, quantiles=LEVELS)
    _check(forecasts, 5)
    assert forecasts[ModelId("zero")].values.max() == 0.0


def test_models_that_appear_later_are_forecast(small_batch: SeriesBatch) -> None:
    engine = AutoForecaster(step_s=60)
    engine.observe(small_batch)
    engine.forecast(horizon_steps=5, quantiles=LEVELS)
    late = SeriesBatch((ModelId("late"),), small_batch.end_s, 60, np.array([[4.0, 5.0]]))
    engine.observe(late)
    forecasts = engine.forecast(horizon_steps=5, quantiles=LEVELS)
    assert ModelId("late") in forecasts
    _check(forecasts, 5)


def test_last_forecasts_are_marked_stale(small_batch: SeriesBatch) -> None:
    engine = AutoForecaster(step_s=60)
    engine.observe(small_batch)
    fresh = engine.forecast(horizon_steps=5, quantiles=LEVELS)
    stale = engine.last_forecasts()
    assert set(stale) == set(fresh)
    assert all(item.stale for item in stale.values())
    np.testing.assert_array_equal(
        stale[ModelId("model-0")].values, fresh[ModelId("model-0")].values
    )


def test_periodic_intermittent_model_gets_a_high_p_active_where_it_fires() -> None:
    counts = np.zeros((1, 600))
    counts[0, ::15] = 2.0  # fires every 15 minutes; the last firing was at step 585
    engine = AutoForecaster(step_s=60)
    engine.observe(SeriesBatch((ModelId("timer"),), 0.0, 60.0, counts))
    forecast = engine.forecast(horizon_steps=20, quantiles=LEVELS)[ModelId("timer")]
    assert forecast.p_active[0] > 0.8  # step 600 = 585 + 15
    assert forecast.p_active[1:14].max() < 0.3
    assert forecast.p_any_within(20) > 0.8


def test_robust_levels_precede_naive_so_that_ties_pick_them() -> None:
    # On a flat series (a timer: 8 requests a minute) naive and the medians tie on every scored
    # step; the first in order wins a tie, and naive would repeat a one-step dip for 15 minutes.
    names = default_candidates(60.0, horizon_steps=15).names
    assert names.index("median-5") < names.index("median-3") < names.index("naive")


def test_candidates_are_named_and_the_combinations_follow_the_point_models() -> None:
    candidates = default_candidates(60.0, horizon_steps=30)
    names = candidates.names
    assert len(set(names)) == len(names)
    assert names[-len(COMBINATIONS) :] == COMBINATIONS
    gbm = Candidate.alone("gbm", lambda history, end, horizon: np.zeros((history.size, horizon)), 1)
    extended = candidates.plus(gbm)
    assert extended.index("gbm") == len(candidates.models)
    assert extended.names[-len(COMBINATIONS) :] == COMBINATIONS
    with pytest.raises(InvalidInput, match="unique"):
        candidates.plus(Candidate(COMBINATIONS[0], gbm.predict, 1))


def test_bad_arguments_are_invalid_input(small_batch: SeriesBatch) -> None:
    engine = AutoForecaster(step_s=60)
    engine.observe(small_batch)
    with pytest.raises(InvalidInput):
        engine.forecast(horizon_steps=0, quantiles=LEVELS)
    with pytest.raises(InvalidInput):
        engine.forecast(horizon_steps=3, quantiles=(0.9, 0.5))
    with pytest.raises(InvalidInput):
        engine.observe(SeriesBatch(small_batch.models, 0.0, 600.0, small_batch.counts[:, :2]))
    with pytest.raises(InvalidInput):
        AutoForecaster(step_s=0)
    with pytest.raises(InvalidInput):
        AutoForecaster(step_s=60, point_margin=1.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.one_of(st.floats(0, 1e6), st.just(float("nan"))), min_size=1, max_size=200),
    horizon=st.integers(1, 40),
)
def test_any_history_gives_finite_non_crossing_quantiles(values: list[float], horizon: int) -> None:
    engine = AutoForecaster(step_s=60)
    engine.observe(SeriesBatch((ModelId("x"),), 0.0, 60.0, np.array([values])))
    forecasts = engine.forecast(horizon_steps=horizon, quantiles=LEVELS)
    _check(forecasts, horizon)
