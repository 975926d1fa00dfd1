"""The price of idle memory: fleet averages, and what they make the planner hold."""

from __future__ import annotations

import math

import pytest

from common.ids import ModelId
from planner.config import PlannerConfig
from planner.planner import ModelState, PlannerState, plan
from planner.price import HALF_LIFE_S, WAKE_REQUESTS, FleetIdle
from tests.planner.helpers import context, forecast, spec


def test_no_basis_for_a_price_before_any_traffic() -> None:
    fleet = FleetIdle().observe(0.0, 0.0, 0.0).observe(60.0, 0.0, 0.0)
    assert fleet.requests_per_idle_gb() is None


def test_the_first_observation_only_starts_the_clock() -> None:
    fleet = FleetIdle().observe(100.0, 50.0, 10.0)
    assert (fleet.requests, fleet.idle_gb, fleet.last_s) == (0.0, 0.0, 100.0)


def test_averages_are_time_weighted() -> None:
    # 10 rps with 100 GB idle for 60 s, then 30 rps with 100 GB idle for 60 s: 0.2 rps per GB.
    fleet = FleetIdle().observe(0.0, 0.0, 0.0)
    fleet = fleet.observe(60.0, 10.0, 100.0).observe(120.0, 30.0, 100.0)
    ratio = fleet.requests_per_idle_gb()
    assert ratio is not None
    assert ratio == pytest.approx(0.2, rel=1e-2)


def test_old_observations_fade_with_the_half_life() -> None:
    fleet = FleetIdle().observe(0.0, 0.0, 0.0).observe(60.0, 100.0, 1.0)
    later = fleet.observe(60.0 + HALF_LIFE_S, 0.0, 0.0)
    assert later.requests == pytest.approx(fleet.requests * 0.5)


def test_traffic_without_reactive_idle_memory_prices_holds_out() -> None:
    fleet = FleetIdle().observe(0.0, 0.0, 0.0).observe(60.0, 5.0, 0.0)
    assert fleet.requests_per_idle_gb() == math.inf


@pytest.mark.parametrize("bad", [math.nan, -5.0, math.inf, -math.inf])
def test_bad_inputs_count_as_zero(bad: float) -> None:
    fleet = FleetIdle().observe(0.0, 0.0, 0.0).observe(60.0, bad, bad)
    assert (fleet.requests, fleet.idle_gb) == (0.0, 0.0)


def test_a_clock_going_backwards_adds_nothing() -> None:
    fleet = FleetIdle().observe(100.0, 1.0, 1.0).observe(160.0, 1.0, 1.0)
    assert fleet.observe(50.0, 99.0, 99.0) == fleet


def _idle_model_plan(fleet: FleetIdle, idle_price: float) -> int:
    """Target of an idle 14.5 GB model with P=0.5 next to a model the autoscaler keeps idle."""
    specs = [spec("idle", weights_gb=14.5), spec("tail", weights_gb=14.5)]
    states = {"tail": ModelState(model=ModelId("tail"), ready_replicas=1)}
    ctx = context(
        specs,
        forecasts={"idle": forecast("idle", p_active=0.5)},
        states=states,
        now_s=fleet.last_s or 0.0,
        config=PlannerConfig(idle_price=idle_price, min_value_density=0.0),
    )
    return plan(ctx, PlannerState(fleet=fleet)).models[ModelId("idle")].target_replicas


def test_a_busy_fleet_with_little_idle_memory_holds_less() -> None:
    # Few requests per idle GB: holding the model is cheap in the fleet's terms.
    quiet = FleetIdle().observe(0.0, 0.0, 0.0).observe(3600.0, 1.0, 1000.0)
    # Many requests per idle GB: the same hold costs more than it saves.
    busy = FleetIdle().observe(0.0, 0.0, 0.0).observe(3600.0, 1000.0, 1.0)
    assert _idle_model_plan(quiet, idle_price=0.001) == 1
    assert _idle_model_plan(busy, idle_price=0.001) == 0
    # With the price off, min_value_density alone decides.
    assert _idle_model_plan(busy, idle_price=0.0) == 1


def test_the_plan_carries_the_fleet_averages_forward() -> None:
    specs = [spec("m", weights_gb=14.5)]
    states = {"m": ModelState(model=ModelId("m"), ready_replicas=1, observed_rps=0.0)}
    start = FleetIdle().observe(0.0, 0.0, 0.0)
    ctx = context(specs, states=states, now_s=60.0)
    fleet = plan(ctx, PlannerState(fleet=start)).state.fleet
    # The model's replica was not the planner's and it had no traffic: reactive idle memory.
    assert fleet.last_s == 60.0
    assert fleet.idle_gb == pytest.approx(14.5 * 60.0)


def test_replicas_only_observed_traffic_needs_are_not_the_planners_own() -> None:
    # Traffic now gives a reactive floor of one; the forecast sees nothing ahead, so the hold is
    # not worth its memory: the replica is the autoscaler's, not a planned one.
    specs = [spec("m", weights_gb=14.5)]
    states = {"m": ModelState(model=ModelId("m"), ready_replicas=1, observed_rps=0.01)}
    ctx = context(
        specs,
        forecasts={"m": forecast("m", p_active=0.0)},
        states=states,
        config=PlannerConfig(min_value_density=10.0),
    )
    result = plan(ctx, PlannerState())
    assert result.models[ModelId("m")].target_replicas == 1
    assert ModelId("m") not in result.state.planned


def test_wake_ups_count_as_at_least_wake_requests_each() -> None:
    # One request per wake-up, 10 wake-ups: priced as 10 x WAKE_REQUESTS requests.
    fleet = FleetIdle().observe(0.0, 0.0, 0.0).observe(600.0, 10.0 / 600.0, 100.0, 10.0)
    assert fleet.wakes == 10.0
    assert fleet.requests_per_idle_gb() == pytest.approx(10.0 * WAKE_REQUESTS / (100.0 * 600.0))
    # A busy fleet's requests outnumber its wake-ups' worth: priced by its requests.
    busy = FleetIdle().observe(0.0, 0.0, 0.0).observe(600.0, 1000.0, 100.0, 10.0)
    assert busy.requests_per_idle_gb() == pytest.approx(1000.0 / 100.0)
    later = fleet.observe(600.0 + HALF_LIFE_S, 0.0, 0.0)
    assert later.wakes == pytest.approx(5.0)


def test_a_fleet_of_rarely_called_models_prices_holds_by_its_wake_ups() -> None:
    # The same requests per idle GB; in one fleet every request wakes a model. Its request rate
    # alone would make the hold cheap; counted by its cold starts, the hold is not worth it.
    steady = FleetIdle().observe(0.0, 0.0, 0.0).observe(3600.0, 0.05, 1000.0)
    waking = FleetIdle().observe(0.0, 0.0, 0.0).observe(3600.0, 0.05, 1000.0, 180.0)
    assert _idle_model_plan(steady, idle_price=0.1) == 1
    assert _idle_model_plan(waking, idle_price=0.1) == 0


def test_the_plan_counts_models_woken_since_the_last_plan() -> None:
    specs = [spec("a", weights_gb=14.5), spec("b", weights_gb=14.5), spec("c", weights_gb=14.5)]
    quiet = {m: ModelState(model=ModelId(m)) for m in ("a", "b")}
    quiet["c"] = ModelState(model=ModelId("c"), ready_replicas=1, observed_rps=1.0)
    first = plan(context(specs, states=quiet, now_s=0.0), PlannerState()).state
    assert first.idle == frozenset({ModelId("a"), ModelId("b")})
    # a wakes; b stays idle; c was busy already (not a wake-up).
    busy = dict(quiet, a=ModelState(model=ModelId("a"), ready_replicas=1, observed_rps=0.5))
    second = plan(context(specs, states=busy, now_s=60.0), first).state
    assert second.fleet.wakes == 1.0
    assert second.idle == frozenset({ModelId("b")})
