from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.ids import ModelId
from planner.actions import Evict, ImagePrepull, NodeCapacity, Preload, ReplicaFloor, Tier
from planner.catalog import GB
from planner.config import PlannerConfig
from planner.leadtime import LeadTimeBook, Stage, StageObservation, start_seconds
from planner.planner import ModelState, PlannerState, PoolState, plan
from tests.planner.helpers import context, forecast, spec


def targets(result) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {str(m): p.target_replicas for m, p in result.models.items()}


def test_likely_model_is_preloaded_and_unlikely_one_is_not() -> None:
    specs = [spec("hot", weights_gb=14.5), spec("cold", weights_gb=14.5)]
    ctx = context(
        specs,
        forecasts={"hot": forecast("hot", p_active=0.5), "cold": forecast("cold", p_active=0.0001)},
        now_s=1000.0,
    )
    result = plan(ctx, PlannerState())
    assert targets(result) == {"hot": 1, "cold": 0}
    preloads = result.plan.of_type(Preload)
    assert [p.model for p in preloads if p.tier == Tier.GPU] == [ModelId("hot")]
    gpu = next(p for p in preloads if p.tier == Tier.GPU)
    # "now" comes from the context: deadlines are relative to it, never to the clock.
    assert gpu.deadline_s > 1000.0
    assert gpu.deadline_s < 1000.0 + 3600.0
    assert result.plan.now_s == 1000.0
    floors = result.plan.of_type(ReplicaFloor)
    assert [(f.model, f.min_replicas) for f in floors] == [(ModelId("hot"), 1)]


def test_reactive_floor_holds_even_when_the_forecast_says_nothing() -> None:
    specs = [spec("m", replica_rps=2.0, weights_gb=14.5)]
    states = {"m": ModelState(model=ModelId("m"), ready_replicas=1, observed_rps=5.0)}
    ctx = context(specs, forecasts={"m": forecast("m", p_active=0.0)}, states=states)
    result = plan(ctx, PlannerState())
    # 5 rps over 2 rps x 0.8 utilisation -> 4 replicas.
    assert targets(result)["m"] == 4


def test_forecast_raises_replicas_above_the_observation() -> None:
    specs = [spec("m", replica_rps=2.0, weights_gb=14.5)]
    states = {"m": ModelState(model=ModelId("m"), ready_replicas=1, observed_rps=2.5)}
    ctx = context(specs, forecasts={"m": forecast("m", p_active=1.0, rate_rps=8.0)}, states=states)
    result = plan(ctx, PlannerState())
    assert targets(result)["m"] == 5
    assert result.plan.of_type(NodeCapacity)


def test_a_forecast_the_observation_contradicts_sizes_no_replicas() -> None:
    # The forecast expects 8 rps now; 1 rps is observed (below a quarter): it is stale.
    specs = [spec("m", replica_rps=2.0, weights_gb=14.5)]
    states = {"m": ModelState(model=ModelId("m"), ready_replicas=1, observed_rps=1.0)}
    ctx = context(specs, forecasts={"m": forecast("m", p_active=1.0, rate_rps=8.0)}, states=states)
    explained = plan(ctx, PlannerState()).models[ModelId("m")]
    assert explained.forecast_replicas == 0
    assert explained.target_replicas == 1


def test_scale_down_keeps_only_replicas_the_planner_asked_for() -> None:
    # Five replicas run, but the last plan asked for two (the autoscaler added the rest): the
    # floor holds two, never pins the autoscaler's five.
    specs = [spec("m", replica_rps=2.0, weights_gb=14.5)]
    states = {"m": ModelState(model=ModelId("m"), ready_replicas=5, observed_rps=2.5)}
    ctx = context(specs, forecasts={"m": forecast("m", p_active=1.0, rate_rps=2.5)}, states=states)
    result = plan(ctx, PlannerState(planned={ModelId("m"): 2}))
    assert targets(result)["m"] == 2


def test_scale_down_waits_for_forecast_and_observation_to_agree() -> None:
    specs = [spec("m", replica_rps=2.0, weights_gb=14.5)]
    config = PlannerConfig(scale_down_after_s=300.0)
    busy = forecast("m", p_active=1.0, rate_rps=8.0)
    quiet_state = {"m": ModelState(model=ModelId("m"), ready_replicas=5, observed_rps=2.0)}
    planned = PlannerState(planned={ModelId("m"): 5})
    # Observation is low but the forecast is not: keep 5.
    result = plan(context(specs, forecasts={"m": busy}, states=quiet_state, config=config), planned)
    assert targets(result)["m"] == 5
    # Both low: still 5 until they have agreed for 300 s, then down.
    quiet = forecast("m", p_active=1.0, rate_rps=2.0)
    state = planned
    first = plan(
        context(specs, forecasts={"m": quiet}, states=quiet_state, config=config, now_s=0.0), state
    )
    assert targets(first)["m"] == 5
    later = plan(
        context(specs, forecasts={"m": quiet}, states=quiet_state, config=config, now_s=301.0),
        first.state,
    )
    assert targets(later)["m"] == 2


def test_idle_model_is_evicted_when_both_say_idle() -> None:
    specs = [spec("m", weights_gb=14.5)]
    states = {"m": ModelState(model=ModelId("m"), ready_replicas=1, tier=Tier.DISK)}
    result = plan(
        context(specs, forecasts={"m": forecast("m", p_active=0.0)}, states=states),
        PlannerState(held=frozenset({ModelId("m")})),
    )
    assert targets(result)["m"] == 0
    evictions = result.plan.of_type(Evict)
    assert [(e.model, e.tier) for e in evictions] == [(ModelId("m"), Tier.GPU)]


def test_min_and_max_replicas_bound_targets() -> None:
    specs = [spec("pinned", min_replicas=2), spec("capped", max_replicas=1, replica_rps=1.0)]
    states = {"capped": ModelState(model=ModelId("capped"), ready_replicas=1, observed_rps=50.0)}
    result = plan(context(specs, states=states), PlannerState())
    assert targets(result) == {"pinned": 2, "capped": 1}


def test_budget_keeps_the_denser_model() -> None:
    small = spec("small", weights_gb=10.0)
    big = spec("big", weights_gb=100.0)
    config = PlannerConfig(gpu_memory_budget_bytes=50 * GB)
    ctx = context(
        [small, big],
        forecasts={"small": forecast("small", p_active=0.5), "big": forecast("big", p_active=0.5)},
        config=config,
    )
    result = plan(ctx, PlannerState())
    assert targets(result) == {"small": 1, "big": 0}
    assert result.gpu_bytes <= 50 * GB


def test_host_tier_and_image_prepull() -> None:
    specs = [spec("m", weights_gb=26.1)]
    config = PlannerConfig(min_value_density=1e9, host_min_value_density=0.0001)
    ctx = context(specs, forecasts={"m": forecast("m", p_active=0.3)}, config=config)
    result = plan(ctx, PlannerState())
    assert targets(result)["m"] == 0
    assert [p.tier for p in result.plan.of_type(Preload)] == [Tier.HOST]
    assert result.plan.of_type(ImagePrepull)


def test_lead_times_are_learned_as_a_high_quantile() -> None:
    s = spec("m", weights_gb=10.0, compile_s=40.0)
    config = PlannerConfig()
    book = LeadTimeBook(min_samples=3)
    before = start_seconds(
        book, s, config.stages, tier=Tier.DISK, image_cached=True, needs_node=False
    )
    slow = [StageObservation(Stage.WEIGHTS_DISK, "gpu", seconds=20.0, gb=10.0)] * 3
    after = start_seconds(
        book.observe(slow), s, config.stages, tier=Tier.DISK, image_cached=True, needs_node=False
    )
    # Default disk->GPU for 10 GB is 10/2.5 + 10/20 = 4.5 s; learned is 20 s.
    assert after - before == pytest.approx(20.0 - 4.5)
    node = book.observe(
        [StageObservation(Stage.NODE, "gpu", seconds=s_) for s_ in (100.0, 200.0, 300.0, 400.0)]
    )
    assert node.seconds(Stage.NODE, "gpu", 1.0) == pytest.approx(370.0)


def test_pool_without_free_gpus_adds_the_node_to_the_lead_time() -> None:
    specs = [spec("m", weights_gb=14.5)]
    free = context(specs, forecasts={"m": forecast("m", p_active=0.5)})
    full = context(specs, forecasts={"m": forecast("m", p_active=0.5)})
    full = type(full)(
        **{
            **{f: getattr(full, f) for f in full.__dataclass_fields__},
            "pools": {specs[0].node_pool: PoolState(pool=specs[0].node_pool, free_gpus=0)},
        }
    )
    lead_free = plan(free, PlannerState()).models[ModelId("m")].lead_s
    lead_full = plan(full, PlannerState()).models[ModelId("m")].lead_s
    assert lead_full - lead_free >= PlannerConfig().stages.node_provision_s - 1e-6


# -- properties ----------------------------------------------------------------------------------

_model = st.fixed_dictionaries(
    {
        "weights_gb": st.sampled_from([3.1, 6.5, 14.5, 16.1, 26.1, 67.5, 141.2]),
        "p_active": st.floats(0.0, 1.0),
        "rate": st.floats(0.0, 20.0),
        "observed": st.floats(0.0, 20.0) | st.just(0.0),
        "ready": st.integers(0, 4),
        "min": st.integers(0, 2),
        "extra": st.integers(0, 6),
        "held": st.booleans(),
    }
)


def _scenario(models: list[dict[str, float]], budget_gb: float | None):  # type: ignore[no-untyped-def]
    specs = [
        spec(
            f"m{i}",
            weights_gb=m["weights_gb"],
            min_replicas=int(m["min"]),
            max_replicas=int(m["min"] + m["extra"]),
            replica_rps=2.0,
        )
        for i, m in enumerate(models)
    ]
    forecasts = {
        f"m{i}": forecast(f"m{i}", p_active=m["p_active"], rate_rps=m["rate"])
        for i, m in enumerate(models)
    }
    states = {
        f"m{i}": ModelState(
            model=ModelId(f"m{i}"), ready_replicas=int(m["ready"]), observed_rps=m["observed"]
        )
        for i, m in enumerate(models)
    }
    config = PlannerConfig(
        gpu_memory_budget_bytes=None if budget_gb is None else round(budget_gb * GB)
    )
    held = frozenset(ModelId(f"m{i}") for i, m in enumerate(models) if m["held"])
    return (
        context(specs, forecasts=forecasts, states=states, config=config),
        PlannerState(held=held),
        specs,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models=st.lists(_model, min_size=1, max_size=12), budget_gb=st.floats(0.0, 2000.0))
def test_planned_bytes_never_exceed_the_budget(models, budget_gb) -> None:  # type: ignore[no-untyped-def]
    ctx, state, specs = _scenario(models, budget_gb)
    result = plan(ctx, state)
    planned = sum(result.models[s.model].target_replicas * s.weights_bytes for s in specs)
    assert planned == result.gpu_bytes
    assert planned <= round(budget_gb * GB)
    preloaded = sum(p.bytes for p in result.plan.of_type(Preload) if p.tier == Tier.GPU)
    assert preloaded <= round(budget_gb * GB)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    models=st.lists(_model, min_size=1, max_size=12), budget_gb=st.none() | st.floats(0.0, 2000.0)
)
def test_targets_stay_within_min_and_max(models, budget_gb) -> None:  # type: ignore[no-untyped-def]
    ctx, state, specs = _scenario(models, budget_gb)
    result = plan(ctx, state)
    for s in specs:
        target = result.models[s.model].target_replicas
        assert target <= s.max_replicas
        if budget_gb is None:
            assert target >= s.min_replicas


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models=st.lists(_model, min_size=2, max_size=12), budget_gb=st.floats(0.0, 600.0))
def test_eviction_never_drops_a_model_valued_higher_than_a_kept_one(models, budget_gb) -> None:  # type: ignore[no-untyped-def]
    for m in models:
        m["observed"] = 0.0
        m["rate"] = 0.0
        m["min"] = 0
        m["extra"] = max(1, int(m["extra"]))
    ctx, state, _ = _scenario(models, budget_gb)
    result = plan(ctx, state)
    evicted = [e.model for e in result.plan.of_type(Evict) if e.tier == Tier.GPU]
    kept = [m for m, p in result.models.items() if p.target_replicas > 0]
    if not evicted or not kept:
        return
    worst_kept = min(result.models[m].value_density for m in kept)
    best_evicted = max(result.models[m].value_density for m in evicted)
    assert best_evicted <= worst_kept + 1e-9
    assert math.isfinite(best_evicted)


def test_a_model_loading_into_gpu_keeps_its_host_copy() -> None:
    # Held in host memory, now planned into GPU but not ready yet: the host copy is what the load
    # reads, so it is kept (not evicted) even with no host room for anything else.
    specs = [spec("m", weights_gb=26.1), spec("other", weights_gb=26.1)]
    pools = {
        spec("m", weights_gb=26.1).node_pool: PoolState(
            pool=spec("m", weights_gb=26.1).node_pool, free_gpus=8, host_capacity_bytes=30 * GB
        )
    }
    states = {"m": ModelState(model=ModelId("m"), tier=Tier.HOST)}
    forecasts = {"m": forecast("m", p_active=0.9), "other": forecast("other", p_active=0.5)}
    ctx = context(specs, forecasts=forecasts, states=states, pools=pools)
    result = plan(ctx, PlannerState(host_held=frozenset({ModelId("m")})))
    assert targets(result)["m"] == 1
    assert result.models[ModelId("m")].hold_host
    assert not result.plan.of_type(Evict)
