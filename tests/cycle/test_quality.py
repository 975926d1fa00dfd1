from __future__ import annotations

import math

from common.ids import ModelId
from prewarm.cycle.quality import LiveAccuracy, Quality, gate_failure, passes_gate

M = ModelId("m")


def test_scores_only_forecast_steps_and_rolls_the_window() -> None:
    accuracy = LiveAccuracy(window_steps=3)
    for step in range(5):
        accuracy.record_forecast(M, step_start_s=step * 60.0, mean=10.0, planning_quantile=12.0)
    for step, actual in enumerate([10.0, 14.0, 8.0, 10.0, 20.0]):
        accuracy.record_actual(M, step_start_s=step * 60.0, actual=actual)
    accuracy.record_actual(M, step_start_s=999.0, actual=5.0)  # never forecast: ignored
    quality = accuracy.quality(M)
    assert quality.steps == 3  # window keeps the last three: 8, 10, 20
    assert math.isclose(quality.error_ratio, (2 + 0 + 10) / 38)
    assert math.isclose(quality.under_forecast_ratio, 1 / 3)


def test_nan_actuals_are_gaps_not_errors() -> None:
    accuracy = LiveAccuracy(window_steps=10)
    accuracy.record_forecast(M, step_start_s=0.0, mean=1.0, planning_quantile=2.0)
    accuracy.record_actual(M, step_start_s=0.0, actual=float("nan"))
    assert accuracy.quality(M).steps == 0


def test_pending_forecasts_are_bounded() -> None:
    accuracy = LiveAccuracy(window_steps=10, max_pending=4)
    for step in range(100):
        accuracy.record_forecast(M, step_start_s=float(step), mean=1.0, planning_quantile=2.0)
    accuracy.record_actual(M, step_start_s=0.0, actual=1.0)  # evicted long ago
    assert accuracy.quality(M).steps == 0
    accuracy.record_actual(M, step_start_s=99.0, actual=1.0)
    assert accuracy.quality(M).steps == 1


def test_gate() -> None:
    limits = {"min_steps": 5, "max_error_ratio": 0.5, "max_under_forecast_ratio": 0.2}
    assert passes_gate(Quality(steps=2, error_ratio=9.0, under_forecast_ratio=1.0), **limits)
    assert passes_gate(Quality(steps=50, error_ratio=0.4, under_forecast_ratio=0.1), **limits)
    assert not passes_gate(Quality(steps=50, error_ratio=0.6, under_forecast_ratio=0.1), **limits)
    assert not passes_gate(Quality(steps=50, error_ratio=0.1, under_forecast_ratio=0.5), **limits)


def test_gate_failure_names_each_broken_limit() -> None:
    limits = {"max_error_ratio": 1.0, "max_under_forecast_ratio": 0.2, "planning_quantile": 0.9}
    both = gate_failure(Quality(steps=120, error_ratio=1.42, under_forecast_ratio=0.35), **limits)
    assert both == (
        "forecast error 1.42x the mean actual (limit 1.00x) and 35% of steps above the p90 "
        "forecast (limit 20%) over the last 120 steps"
    )
    one = gate_failure(Quality(steps=8, error_ratio=0.5, under_forecast_ratio=0.5), **limits)
    assert one == "50% of steps above the p90 forecast (limit 20%) over the last 8 steps"
