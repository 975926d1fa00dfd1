"""The mean-reverting level model, and the engine's point forecast on a mean-reverting series."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.ids import ModelId
from forecaster.engine import AutoForecaster
from forecaster.history import HistoryBuffer
from forecaster.models import reverting
from forecaster.types import SeriesBatch


def _history(counts: np.ndarray) -> HistoryBuffer:
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    buffer = HistoryBuffer(step_s=60, capacity_steps=10_000)
    models = tuple(ModelId(f"m{i}") for i in range(counts.shape[0]))
    buffer.extend(SeriesBatch(models=models, start_s=0.0, step_s=60.0, counts=counts))
    return buffer


def _ar1(rho: float, steps: int, *, level: float, sd: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(steps)
    deviation = 0.0
    for t in range(steps):
        deviation = rho * deviation + rng.normal(0.0, sd)
        out[t] = level + deviation
    return out


def test_anchor_steps_are_powers_of_two_and_the_last_step() -> None:
    np.testing.assert_array_equal(reverting.anchor_steps(1), [1])
    np.testing.assert_array_equal(reverting.anchor_steps(2), [1, 2])
    np.testing.assert_array_equal(reverting.anchor_steps(15), [1, 2, 4, 8, 15])
    np.testing.assert_array_equal(reverting.anchor_steps(16), [1, 2, 4, 8, 16])


def test_noise_around_a_level_forecasts_the_mean() -> None:
    rng = np.random.default_rng(0)
    values = 100.0 + rng.normal(0.0, 5.0, 600)
    values[-1] = 115.0  # a noisy last step says nothing about the next ones
    out = reverting.mean_reverting(_history(values), 600, 10, mean_window=60, fit_steps=360)
    mean = values[-60:].mean()
    assert out.shape == (1, 10)
    assert np.all(np.abs(out - mean) < 2.0)


def test_a_random_walk_forecasts_the_last_step() -> None:
    rng = np.random.default_rng(1)
    values = 500.0 + np.cumsum(rng.normal(0.0, 5.0, 600))
    out = reverting.mean_reverting(_history(values), 600, 5, mean_window=60, fit_steps=360)
    spread = np.abs(values[-1] - values[-60:].mean())
    assert np.all(np.abs(out - values[-1]) < 0.25 * spread + 1.0)


def test_a_dip_decays_back_to_the_mean_at_the_measured_rate() -> None:
    values = _ar1(0.8, 800, level=1000.0, sd=40.0, seed=2)
    values[-1] = values[-61:-1].mean() - 150.0  # the newest step dips (within 3 sd: unclipped)
    out = reverting.mean_reverting(_history(values), 800, 30, mean_window=240, fit_steps=360)[0]
    mu = values[-240:].mean()
    deviation = values[-1] - mu
    share = (out - mu) / deviation
    assert 0.6 < share[0] < 0.95  # about rho
    assert np.all(np.diff(share) <= 1e-9)  # decays
    assert share[-1] < 0.15  # and is gone well within the horizon


def test_one_burst_of_an_idle_series_does_not_hold_the_mean_up() -> None:
    rng = np.random.default_rng(3)
    values = rng.poisson(2.0, 600).astype(np.float64)
    values[500:503] = [550.0, 700.0, 220.0]
    out = reverting.mean_reverting(_history(values), 600, 5, mean_window=240, fit_steps=360)
    assert np.all(out < 5.0)  # the unclipped 240-step mean is about 7.8


def test_short_or_missing_history_gives_the_mean_or_zero_never_nan() -> None:
    values = np.full((3, 30), np.nan)
    values[0, -10:] = 4.0
    values[1, -3:] = [1.0, 2.0, 3.0]
    out = reverting.mean_reverting(_history(values), 30, 6, mean_window=60, fit_steps=360)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], 4.0)
    np.testing.assert_allclose(out[1], 2.0)  # too few pairs to fit: the mean of what there is
    np.testing.assert_array_equal(out[2], 0.0)


def test_shared_span_and_cache_give_the_same_forecasts() -> None:
    rng = np.random.default_rng(4)
    values = rng.poisson(30.0, (4, 700)).astype(np.float64)
    values[1, 100:140] = np.nan  # a gap
    history = _history(values)
    cache: reverting.BlockCache = {}
    for window in (60, 240):
        alone = reverting.mean_reverting(history, 700, 12, mean_window=window, fit_steps=360)
        shared = reverting.mean_reverting(
            history, 700, 12, mean_window=window, fit_steps=360, span=599, cache=cache
        )
        np.testing.assert_allclose(shared, alone, rtol=1e-5, atol=1e-4)  # float32 sums
    assert len(cache) == 1


def test_bad_arguments_raise() -> None:
    history = _history(np.ones(10))
    with pytest.raises(ValueError):
        reverting.mean_reverting(history, 10, 3, mean_window=0, fit_steps=10)
    with pytest.raises(ValueError):
        reverting.mean_reverting(history, 10, 3, mean_window=60, fit_steps=10, span=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.one_of(st.floats(0, 1e7), st.just(float("nan"))), min_size=1, max_size=120),
    horizon=st.integers(1, 40),
    window=st.integers(1, 30),
)
def test_any_history_gives_finite_non_negative_forecasts(
    values: list[float], horizon: int, window: int
) -> None:
    history = _history(np.array([values]))
    out = reverting.mean_reverting(history, len(values), horizon, mean_window=window, fit_steps=40)
    assert out.shape == (1, horizon)
    assert np.all(np.isfinite(out))
    assert np.all(out >= 0.0)


def test_engine_point_forecast_beats_naive_on_a_mean_reverting_series() -> None:
    """Dips that recover within minutes: the mean (chosen on absolute error) should beat the
    last value held flat, which is what the naive and fast smoothing candidates do."""
    steps, horizon, start = 900, 15, 600
    values = _ar1(0.85, steps, level=4000.0, sd=150.0, seed=5)
    model = ModelId("busy")
    engine = AutoForecaster(step_s=60)
    engine_error, naive_error = [], []
    observed = 0
    for origin in range(start, steps - horizon, 5):
        batch = SeriesBatch((model,), observed * 60.0, 60.0, values[None, observed:origin])
        engine.observe(batch)
        observed = origin
        forecast = engine.forecast(horizon_steps=horizon, quantiles=(0.5, 0.9))[model]
        actual = values[origin : origin + horizon]
        engine_error.append(np.abs(actual - forecast.mean).mean())
        naive_error.append(np.abs(actual - values[origin - 1]).mean())
    assert np.mean(engine_error) < 0.95 * np.mean(naive_error)
    assert engine.candidates.names[-2:] == ("ensemble", "ensemble-point")
