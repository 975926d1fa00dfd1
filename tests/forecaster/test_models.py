"""Point models, intermittent hazards, Holt-Winters/ETS filtering and conformal quantiles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.ids import ModelId
from forecaster.history import HistoryBuffer
from forecaster.models import holt_winters, intermittent, naive, seasonal
from forecaster.models.base import nanmedian
from forecaster.models.conformal import ResidualModel, stratum
from forecaster.types import SeriesBatch


def _history(counts: np.ndarray, *, capacity: int = 10_000) -> HistoryBuffer:
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    buffer = HistoryBuffer(step_s=60, capacity_steps=capacity)
    models = tuple(ModelId(f"m{i}") for i in range(counts.shape[0]))
    buffer.extend(SeriesBatch(models=models, start_s=0.0, step_s=60.0, counts=counts))
    return buffer


def test_history_ring_buffer_keeps_the_last_window_and_overwrites_overlaps() -> None:
    buffer = HistoryBuffer(step_s=60, capacity_steps=4)
    buffer.extend(SeriesBatch((ModelId("a"),), 0.0, 60.0, np.array([[1.0, 2, 3]])))
    buffer.extend(SeriesBatch((ModelId("a"),), 120.0, 60.0, np.array([[30.0, 4, 5]])))
    assert buffer.end == 5
    np.testing.assert_array_equal(buffer.window(4), [[2, 30, 4, 5]])
    assert np.isnan(buffer.window(5)[0, 0])  # older than the window
    buffer.extend(SeriesBatch((ModelId("b"),), 300.0, 60.0, np.array([[7.0]])))
    window = buffer.window(2)
    assert np.isnan(window[0, 1])
    assert window[1, 1] == 7


def test_gather_matches_the_ring_for_runs_wraps_and_scattered_offsets() -> None:
    rng = np.random.default_rng(0)
    capacity = 50
    counts = rng.poisson(5.0, (3, 130)).astype(np.float64)
    buffer = _history(counts, capacity=capacity)  # 130 steps into 50: the ring has wrapped
    end = buffer.end
    cases = [
        np.arange(-10, 0),  # a run inside the ring
        np.arange(-40, 0),  # a run that wraps (130 % 50 = 30)
        np.array([-1, -7, -3, -49]),  # scattered
        np.arange(-60, -45),  # partly older than the window: NaN there
        np.array([-2, 0, 3]),  # at or after the end: NaN
    ]
    for offsets in cases:
        got = buffer.gather(offsets.astype(np.int64), end=end)
        steps = end + offsets
        held = (steps >= end - capacity) & (steps < end)
        expected = np.where(held[None, :], counts[:, np.clip(steps, 0, 129)], np.nan)
        np.testing.assert_array_equal(got, expected)
    past = buffer.gather(np.arange(-5, 0, dtype=np.int64), end=end - 10)
    np.testing.assert_array_equal(past, counts[:, end - 15 : end - 10])


def test_level_and_seasonal_naive() -> None:
    history = _history(np.arange(10.0))
    np.testing.assert_array_equal(naive.level(history, 10, 3, window=2), [[8.5, 8.5, 8.5]])
    np.testing.assert_array_equal(naive.seasonal_naive(history, 10, 5, lag=3), [[7, 8, 9, 7, 8]])


def test_seasonal_naive_falls_back_to_level_without_a_season() -> None:
    history = _history(np.array([4.0, 6.0]))
    np.testing.assert_array_equal(naive.seasonal_naive(history, 2, 2, lag=100), [[6, 6]])


def test_smoothed_level_weights_recent_steps_and_skips_gaps() -> None:
    history = _history(np.array([0.0] * 50 + [10.0, np.nan]))
    value = naive.smoothed_level(history, 52, 1, alpha=0.5)[0, 0]
    assert 4.9 < value < 10.0


def test_seasonal_delta_follows_the_daily_shape_from_the_current_level() -> None:
    day = 100
    t = np.arange(3 * day + 10)
    shape = 10 + 5 * np.sin(2 * np.pi * t / day)
    history = _history(shape + 20.0 * (t >= 3 * day))  # a level shift today
    end = 3 * day + 10
    forecast = seasonal.seasonal_delta(
        history, end, 5, lags=(day, 2 * day), radius=0, level_window=1
    )
    expected = shape[end : end + 5] if end + 5 <= len(shape) else None
    truth = 10 + 5 * np.sin(2 * np.pi * np.arange(end, end + 5) / day) + 20
    assert expected is None or expected.shape == (5,)
    np.testing.assert_allclose(forecast[0], truth, atol=1e-6)


def test_intermittent_hazard_peaks_where_a_periodic_model_fires() -> None:
    counts = np.zeros(300)
    counts[::10] = 3.0  # fires every 10 steps; last firing at step 290
    history = _history(counts)
    estimate = intermittent.estimate(history, 300, 15, window=300, max_idle=60)
    # Idle for 10 steps at the origin: the next firing is step 0 (gap 10), then step 10.
    assert estimate.hazard[0, 0] > 0.8
    assert estimate.hazard[0, 1:9].max() < 0.2
    assert estimate.size[0] == pytest.approx(3.0)
    assert estimate.zero_share[0] == pytest.approx(0.9)
    p_within = 1 - np.prod(1 - estimate.hazard[0, :5])
    assert p_within > 0.8


def test_intermittent_never_seen_active_is_finite_and_low() -> None:
    estimate = intermittent.estimate(_history(np.zeros(100)), 100, 5, window=100, max_idle=20)
    assert np.all(np.isfinite(estimate.hazard))
    assert estimate.hazard.max() == 0.0
    assert intermittent.tsb_point(estimate).max() == 0.0


def test_holt_winters_filter_matches_statsmodels_forecast() -> None:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    rng = np.random.default_rng(1)
    t = np.arange(400)
    y = 50 + 10 * np.sin(2 * np.pi * t / 24) + 0.05 * t + rng.normal(0, 2, t.size)
    params = holt_winters.fit_holt_winters(y, season=24)
    states = holt_winters.run_filter(y[None, :], params)
    ours = holt_winters.forecast_at(states, np.array([400]), 30)[0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ExponentialSmoothing(
            y, trend="add", seasonal="add", seasonal_periods=24, initialization_method="heuristic"
        ).fit(use_brute=False)
    expected = reference.forecast(30)
    # statsmodels stores the newest seasonal state (used m steps ahead) from a differently updated
    # level; every other step ahead agrees to rounding.
    others = np.arange(30) != 23
    np.testing.assert_allclose(ours[others], expected[others], rtol=1e-8, atol=1e-8)
    assert abs(ours[23] - expected[23]) < 0.01 * abs(expected[23])


def test_ets_filter_matches_statsmodels_forecast() -> None:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    rng = np.random.default_rng(2)
    y = 20 + np.cumsum(rng.normal(0, 1, 300))
    params = holt_winters.fit_ets(y)
    states = holt_winters.run_filter(y[None, :], params)
    ours = holt_winters.forecast_at(states, np.array([300]), 10)[0, 0]
    reference = ETSModel(y, error="add", trend="add", damped_trend=True).fit(disp=False)
    np.testing.assert_allclose(ours, reference.forecast(10), rtol=1e-6, atol=1e-6)


def test_holt_winters_short_or_flat_series_does_not_fail() -> None:
    for y in (np.zeros(5), np.ones(60), np.array([0.0, 0.0, 3.0, 0.0] * 20)):
        params = holt_winters.fit_holt_winters(y, season=24)
        states = holt_winters.run_filter(y[None, :], params)
        forecast = holt_winters.forecast_at(states, np.array([y.size]), 5)
        assert np.all(np.isfinite(forecast))


def test_conformal_quantiles_cover_and_do_not_cross() -> None:
    rng = np.random.default_rng(0)
    model = ResidualModel(candidates=1, horizon=3)
    model.grow(200)
    scale = np.ones((1, 200))
    strata = stratum(np.full(200, 100.0))
    for _ in range(10):
        residuals = rng.normal(0, 1, (1, 200, 3))
        model.update(residuals, np.arange(3), scale, strata)
    table = model.quantiles((0.1, 0.5, 0.9))[0, strata[0]]  # (levels, horizon)
    assert np.all(np.diff(table, axis=0) > 0)
    np.testing.assert_allclose(table[2], 1.2816, atol=0.2)
    np.testing.assert_allclose(table[1], 0.0, atol=0.2)


def test_conformal_without_evidence_uses_a_wide_default() -> None:
    model = ResidualModel(candidates=2, horizon=4)
    table = model.quantiles((0.5, 0.9))
    assert table.shape == (2, 7, 2, 4)
    assert np.all(table[:, :, 1] > table[:, :, 0])


@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 9)),
        elements=st.one_of(st.just(np.nan), st.floats(-1e6, 1e6), st.sampled_from([0.0, 1.0])),
    ),
    st.sampled_from([0, 1]),
)
def test_nanmedian_matches_numpy(values: np.ndarray, axis: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(values, axis=axis)
    np.testing.assert_array_equal(nanmedian(values, axis=axis), expected)
