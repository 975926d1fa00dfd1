"""Pre-warming metrics on hand-made series with known answers, and the backtest's origins and
short histories."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from common.errors import InvalidInput
from forecaster import backtest
from forecaster.backtest import NAIVE, PREWARM, plan_backtest, run_backtest
from forecaster.engine import AutoForecaster
from forecaster.prewarm_metrics import prewarm_scores, spike_thresholds
from forecaster.types import FloatArray
from tests.forecaster.conftest import synthetic_batch


def test_spike_threshold_is_three_times_the_trailing_hour_median_floored_at_one() -> None:
    idle = np.zeros(70)
    idle[65] = 2.0
    busy = np.full(70, 10.0)
    busy[60:] = 50.0  # half an hour of a higher level moves the 1 h median only at the end
    threshold = spike_thresholds(np.stack([idle, busy]), 60.0)
    # Idle series: the floor (1 request per step) makes 3 the threshold; 2 is not a spike.
    np.testing.assert_allclose(threshold[0], 3.0)
    assert threshold[1, 0] == 3.0  # nothing before the first step: the floor
    assert threshold[1, 60] == 30.0  # the 60 steps before step 60 are all 10
    assert threshold[1, 61] == 30.0  # median of 59 tens and one 50


def test_rolling_median_matches_a_direct_median() -> None:
    rng = np.random.default_rng(3)
    counts = rng.poisson(4.0, size=(3, 200)).astype(np.float64)
    counts[1, 50:55] = np.nan
    streamed = spike_thresholds(counts, 600.0)  # a 6-step trailing hour
    for row in range(3):
        for step in range(1, 200):
            window = counts[row, max(0, step - 6) : step]
            level = np.nanmedian(window) if np.isfinite(window).any() else 0.0
            assert streamed[row, step] == pytest.approx(3.0 * max(level, 1.0))


def _window(values: list[float]) -> FloatArray:
    return np.array(values, dtype=np.float64)


def test_spike_recall_by_lead_and_false_spikes() -> None:
    # One series, per-minute steps, two origins (steps 0 and 3), a 6-step horizon.
    # Actual spike at step 5 only (threshold 3 everywhere).
    origins = np.array([0, 3])
    actual = np.zeros((1, 2, 6))
    actual[0, 0, 5] = 10.0  # origin 0 sees step 5 at lead 6 steps
    actual[0, 1, 2] = 10.0  # origin 3 sees step 5 at lead 3 steps
    threshold = np.full_like(actual, 3.0)
    p90 = np.zeros_like(actual)
    p90[0, 1, 2] = 4.0  # flagged by origin 3 (3 min ahead), missed by origin 0 (6 min ahead)
    p90[0, 0, 1] = 5.0  # a forecast spike at step 1, which was not a spike
    scores = prewarm_scores(
        actual, np.zeros_like(actual), p90, threshold, origins=origins, step_s=60.0
    )
    assert scores.spikes == 1
    assert scores.spike_recall[60.0] == 1.0  # seen 1 min (indeed 3 min) ahead
    assert scores.spike_recall[300.0] == 0.0  # only origin 0 is 5 min ahead, and it missed
    assert scores.spike_recall[900.0] is None  # no origin 15 min ahead of it
    assert scores.false_spike_rate == 0.5
    document = scores.as_dict()
    assert set(document) == {
        "spike_recall_1m",
        "spike_recall_5m",
        "spike_recall_15m",
        "false_spike_rate",
        "peak_error",
        "spikes",
    }


def test_peak_error_on_five_minute_peaks() -> None:
    actual = np.array([[_window([0, 0, 10, 0, 0, 0, 0]), _window([0] * 7)]])
    exact = np.array([[_window([2, 2, 2, 2, 2, 0, 0]), _window([9] * 7)]])  # same 5-min sum
    half = np.array([[_window([1] * 7), _window([9] * 7)]])
    nothing = np.zeros_like(actual)
    origins = np.array([0, 7])
    args = {"origins": origins, "step_s": 60.0}
    threshold = np.full_like(actual, 3.0)
    # The window whose actual peak is zero is left out.
    assert prewarm_scores(actual, exact, exact, threshold, **args).peak_error == 0.0
    assert prewarm_scores(actual, half, half, threshold, **args).peak_error == 0.5
    assert prewarm_scores(nothing, half, half, threshold, **args).peak_error is None


def test_origins_are_capped_and_evenly_spread() -> None:
    batch = synthetic_batch(models=1, days=2.0, step_s=60)
    plan = plan_backtest(batch, horizon_steps=5, max_origins=10)
    last = batch.steps - 5
    assert plan.origins.size == 10
    assert plan.origins[0] == plan.train_end
    assert plan.origins[-1] == last
    gaps = np.diff(plan.origins)
    assert gaps.max() - gaps.min() <= 1
    every = plan_backtest(batch, horizon_steps=5, max_origins=10**6)
    np.testing.assert_array_equal(every.origins, np.arange(plan.train_end, last + 1))


def test_history_limit_truncates_what_each_origin_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    class Spy(AutoForecaster):
        def forecast(self, **kwargs: object) -> dict:  # type: ignore[override,type-arg]
            seen.append(self.history.end - self.history.start)
            return super().forecast(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backtest, "AutoForecaster", Spy)
    batch = synthetic_batch(models=2, days=0.25, step_s=60)
    plan = plan_backtest(batch, horizon_steps=5, history_steps=40, max_origins=4)
    result = run_backtest(batch, horizon_steps=5, plan=plan)
    assert list(result.scores) == [PREWARM, NAIVE]
    assert seen == [40, 40, 40, 40]
    with pytest.raises(InvalidInput, match="history limit"):
        run_backtest(batch, horizon_steps=5, plan=plan, methods=["holt-winters"])


def test_naive_p90_with_a_history_limit_uses_only_the_errors_inside_it() -> None:
    batch = synthetic_batch(models=1, days=0.5, step_s=60)
    counts = batch.counts.copy()
    counts[0, 300:] = 7.0  # wild before step 300, constant after
    batch = replace(batch, counts=counts)
    plan = plan_backtest(batch, horizon_steps=5, history_steps=40, max_origins=5)
    assert plan.origins[0] - 40 >= 300
    result = run_backtest(batch, horizon_steps=5, plan=plan, methods=[NAIVE])
    # Constant inside every window: no error, so the p90 is the point: every step covered.
    assert result.scores[NAIVE].coverage_p90 == 1.0
    assert result.scores[NAIVE].pinball_p90 == pytest.approx(0.0)
    full = run_backtest(batch, horizon_steps=5, methods=[NAIVE], plan=replace(plan, history=None))
    assert full.scores[NAIVE].pinball_p90 > 0.0  # the training part's errors widen it


def test_thresholds_from_a_start_step_match_the_whole_series() -> None:
    counts = np.random.default_rng(5).poisson(3.0, size=(2, 300)).astype(np.float64)
    whole = spike_thresholds(counts, 60.0)
    np.testing.assert_array_equal(spike_thresholds(counts, 60.0, start=200), whole[:, 200:])
    np.testing.assert_array_equal(spike_thresholds(counts, 60.0, start=30), whole[:, 30:])
