"""Calibration of idle models' P against what happened."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.ids import ModelId
from planner.calibration import CONTEXTS, FEW_GAPS, MAX_PENDING, Calibration, Prediction, contexts
from planner.planner import ModelState, PlannerState, plan
from tests.planner.helpers import context, forecast, spec

A, B = ModelId("a"), ModelId("b")


def test_without_outcomes_the_map_is_close_to_the_identity() -> None:
    raw = np.array([0.0, 0.03, 0.25, 0.55, 0.85, 0.97])
    assert Calibration().apply(raw) == pytest.approx(raw, abs=0.03)


def _over_confident(rounds: int, *, hit_every: int) -> Calibration:
    """Model ``a`` is always predicted at P=0.9 over a 60 s window; one window in ``hit_every``
    has a request."""
    calibration = Calibration()
    last = -math.inf
    for k in range(rounds):
        now = 60.0 * k
        if k % hit_every == 0 and k > 0:
            last = now - 1.0  # a request during the last window
        calibration = calibration.update(now, {A: last}, {A: Prediction(0.9, 60.0)})
    return calibration


def test_an_over_confident_p_is_pulled_toward_the_hit_rate() -> None:
    calibration = _over_confident(400, hit_every=10)
    calibrated = float(calibration.apply(np.array([0.9]))[0])
    assert 0.08 < calibrated < 0.2


def test_the_map_keeps_the_order_of_raw_p() -> None:
    calibration = _over_confident(400, hit_every=10)
    raw = np.linspace(0.0, 1.0, 101)
    mapped = calibration.apply(raw)
    assert np.all(np.diff(mapped) >= -1e-12)
    assert np.all((mapped >= 0.0) & (mapped <= 1.0))


def test_models_without_a_known_last_request_are_not_recorded() -> None:
    calibration = Calibration().update(
        0.0, {A: -math.inf}, {A: Prediction(0.5, 60.0), B: Prediction(0.5, 60.0)}
    )
    assert [batch.models for batch in calibration.pending] == [(A,)]


def test_a_hit_resolves_before_the_window_ends() -> None:
    calibration = Calibration().update(0.0, {A: -math.inf}, {A: Prediction(0.5, 600.0)})
    calibration = calibration.update(60.0, {A: 30.0}, {})
    assert calibration.pending == ()
    assert calibration.trials.sum() == pytest.approx(1.0)
    assert calibration.hits.sum() == pytest.approx(calibration.trials.sum())


def test_a_miss_waits_for_the_window_to_end() -> None:
    calibration = Calibration().update(0.0, {A: -math.inf}, {A: Prediction(0.5, 600.0)})
    calibration = calibration.update(60.0, {A: -math.inf}, {})
    assert calibration.trials.sum() == 0.0
    calibration = calibration.update(600.0, {A: -math.inf}, {})
    assert calibration.trials.sum() > 0.0
    assert calibration.hits.sum() == 0.0


@pytest.mark.parametrize("bad", [math.nan, -1.0, 2.0])
def test_bad_probabilities_are_clipped_not_fatal(bad: float) -> None:
    calibration = Calibration().update(0.0, {A: -math.inf}, {A: Prediction(bad, 60.0)})
    calibration = calibration.update(120.0, {A: -math.inf}, {})
    assert np.isfinite(calibration.apply(np.array([0.5]))).all()


def test_open_predictions_are_bounded() -> None:
    calibration = Calibration()
    for k in range(MAX_PENDING + 10):
        calibration = calibration.update(float(k), {A: -math.inf}, {A: Prediction(0.5, 1e9)})
    assert len(calibration.pending) == MAX_PENDING


def test_contexts_are_calibrated_apart() -> None:
    # P=0.5 hits every time in context 1 and never in context 2: each context learns its own.
    calibration = Calibration()
    for k in range(300):
        now = 60.0 * k
        calibration = calibration.update(
            now,
            {A: now - 1.0 if k > 0 else -math.inf, B: -math.inf},
            {A: Prediction(0.5, 60.0, 1), B: Prediction(0.5, 60.0, 2)},
        )
    calibrated = calibration.apply(np.array([0.5, 0.5, 0.5]), np.array([1, 2, 0]))
    assert calibrated[0] > 0.9
    assert calibrated[1] < 0.1
    assert calibrated[2] == pytest.approx(0.5, abs=0.05)  # no outcomes of its own: the pool


def test_the_context_says_source_idle_span_and_evidence() -> None:
    p_forecast = np.array([0.3, 0.1, 0.1, 0.1, 0.1])
    p_record = np.array([0.1, 0.3, 0.3, 0.3, 0.3])
    idle_s = np.array([60.0, 60.0, 7200.0, np.inf, np.nan])
    gaps = np.array([10, 10, 10, 10, FEW_GAPS - 1])
    found = contexts(p_forecast, p_record, idle_s, gaps)
    assert found.tolist() == sorted(set(found.tolist()))  # all different, in this order
    assert ((found >= 0) & (found < CONTEXTS)).all()
    # A tie goes to the forecast; an unknown idle time counts as the longest span.
    tie = contexts(np.array([0.2]), np.array([0.2]), np.array([60.0]), np.array([10]))
    assert tie[0] == found[0]
    assert (
        found[3] == contexts(np.array([0.1]), np.array([0.3]), np.array([1e9]), np.array([10]))[0]
    )


def test_bad_contexts_are_clipped_not_fatal() -> None:
    calibration = Calibration().update(0.0, {A: -math.inf}, {A: Prediction(0.5, 60.0, 999)})
    calibration = calibration.update(120.0, {A: -math.inf}, {})
    assert calibration.trials[CONTEXTS - 1].sum() == pytest.approx(1.0)
    assert np.isfinite(calibration.apply(np.array([0.5]), np.array([-5]))).all()


def test_the_planner_learns_to_doubt_an_idle_models_p() -> None:
    # A 141 GB model the forecast keeps calling likely (P=0.6) never gets a request: once the
    # planner has seen its predictions fail, the calibrated P, and the hold, go.
    specs = [spec("m", weights_gb=141.0)]
    state = PlannerState()
    held = []
    for k in range(200):
        ctx = context(
            specs,
            forecasts={"m": forecast("m", p_active=0.6, start_s=60.0 * k)},
            states={"m": ModelState(model=ModelId("m"), last_request_s=-3600.0)},
            now_s=60.0 * k,
        )
        result = plan(ctx, state)
        state = result.state
        held.append(result.models[ModelId("m")].p_window)
    assert held[0] > 0.9
    assert held[-1] < 0.2
