"""build_explanation: what `prewarm explain` says, from the planner's per-model numbers."""

from __future__ import annotations

import pytest

from common.errors import NotFound
from common.ids import ModelId
from planner.planner import ModelPlan
from prewarm.control.view import DaemonView, StaticDaemonView, build_explanation
from tests.control.conftest import make_forecast
from tests.control.test_service import sample_plan

LLAMA = ModelId("llama-70b")


def model_plan(**fields: object) -> ModelPlan:
    base: dict[str, object] = {
        "model": LLAMA,
        "target_replicas": 2,
        "hold_gpu": True,
        "hold_host": False,
        "p_window": 0.9,
        "value_density": 1e-9,
        "lead_s": 540.0,
        "saved_s": 300.0,
        "floor_replicas": 1,
        "forecast_replicas": 2,
    }
    base.update(fields)
    return ModelPlan(**base)  # type: ignore[arg-type]


def test_summary_value_actions_and_lead_times() -> None:
    forecast = make_forecast("llama-70b", start_s=1000.0)
    plan = sample_plan(1000.0)
    got = build_explanation(
        LLAMA,
        forecast=forecast,
        model_plan=model_plan(),
        plan=plan,
        quantile=0.9,
        lead_times_s={"node": 180.0, "weights": 240.0},
    )
    assert got.forecast_summary.startswith("p90 peaks at 1.5 req/s in 3m")
    assert got.forecast_method == "test-seasonal"
    assert got.value == 900.0  # the plan's actions for the model
    assert got.actions == ("manual request req-0000000000000001 by oncall",)
    assert got.lead_times_s == {"node": 180.0, "weights": 240.0}
    assert got.constraints == ()
    assert "2 replicas planned (forecast 2, reactive floor 1); weights held in GPU" in got.summary
    assert "9m lead time) = 0.90" in got.summary


def test_constraints_that_bound_the_plan() -> None:
    capped = build_explanation(
        LLAMA,
        forecast=None,
        model_plan=model_plan(target_replicas=4, forecast_replicas=6),
        plan=None,
        max_replicas=4,
    )
    assert capped.constraints == ("max_replicas 4 from the catalog",)
    assert capped.forecast_summary == "no forecast yet"
    assert capped.value == 300.0  # no actions: the planner's saved seconds
    assert capped.lead_times_s == {"total": 540.0}
    budget = build_explanation(
        LLAMA,
        forecast=None,
        model_plan=model_plan(target_replicas=1, forecast_replicas=1, floor_replicas=3),
        plan=None,
        max_replicas=8,
        gpu_bytes_planned=160 * 10**9,
        gpu_budget_bytes=160 * 10**9,
        gated=True,
    )
    assert budget.constraints == (
        "forecast quality gate failed: handled reactively (observed traffic)",
        "GPU memory budget: 160.0 GB of 160.0 GB planned; 2 of 3 wanted replicas did not fit",
        "reactive floor: observed traffic needs 3 replicas, more than the forecast's 1",
    )


def test_static_view_is_a_daemon_view() -> None:
    view = StaticDaemonView(models={LLAMA})
    assert isinstance(view, DaemonView)
    assert view.explain(LLAMA).summary == "llama-70b: no plan yet."
    with pytest.raises(NotFound, match="unknown model"):
        view.explain(ModelId("ghost"))


def test_a_model_the_price_of_idle_memory_kept_cold_says_so() -> None:
    got = build_explanation(
        LLAMA,
        forecast=None,
        model_plan=model_plan(
            target_replicas=0,
            hold_gpu=False,
            floor_replicas=0,
            forecast_replicas=0,
            value_density=0.002,
            hold_threshold=0.01,
        ),
        plan=None,
    )
    assert got.constraints == (
        "price of idle memory: value density 0.002 is below the 0.01 a warm hold needs now",
    )
