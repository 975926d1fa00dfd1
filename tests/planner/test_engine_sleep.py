"""Idle replicas kept as warm holds sleep in their engine; forecast or traffic wakes them."""

from __future__ import annotations

import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from planner.actions import EngineSleep, Preload, ReplicaFloor, Tier
from planner.catalog import parse_catalog
from planner.engines import DEFAULT_WAKE_S, EngineSpec, parse_engine
from planner.leadtime import LeadTimeBook, Stage, StageObservation
from planner.planner import ModelState, PlannerState, plan
from tests.planner.helpers import context, forecast, spec

VLLM = EngineSpec(kind="vllm", port=8000)
M = ModelId("m")


def _plan(*, p_active: float, rate_rps: float = 0.0, state: ModelState, engine=VLLM, book=None):  # type: ignore[no-untyped-def]
    specs = [spec("m", weights_gb=14.5, engine=engine)]
    ctx = context(
        specs,
        forecasts={"m": forecast("m", p_active=p_active, rate_rps=rate_rps)},
        states={"m": state},
    )
    return plan(ctx, PlannerState(lead=book or LeadTimeBook(), held=frozenset({M})))


def test_a_warm_hold_with_no_traffic_forecast_sleeps_and_the_agent_holds_no_gpu_copy() -> None:
    result = _plan(p_active=0.02, state=ModelState(model=M, ready_replicas=1, tier=Tier.DISK))
    floors = result.plan.of_type(ReplicaFloor)
    assert [(f.model, f.min_replicas) for f in floors] == [(M, 1)]  # the replica stays
    (sleep,) = result.plan.of_type(EngineSleep)
    assert sleep.asleep
    assert sleep.reason.endswith("kept asleep (level 1)")
    assert not [p for p in result.plan.of_type(Preload) if p.tier is Tier.GPU]


def test_an_asleep_replica_plans_with_the_wake_up_as_its_lead_time() -> None:
    asleep = ModelState(model=M, ready_replicas=1, asleep_replicas=1, tier=Tier.DISK)
    result = _plan(p_active=0.02, state=asleep)
    assert result.models[M].lead_s == DEFAULT_WAKE_S
    assert not result.plan.of_type(EngineSleep)  # already asleep: nothing to change
    learned = LeadTimeBook().observe(StageObservation(Stage.WAKE, "m", s) for s in (1.0, 2.0, 3.0))
    assert _plan(p_active=0.02, state=asleep, book=learned).models[M].lead_s < DEFAULT_WAKE_S


def test_forecast_traffic_wakes_the_replica() -> None:
    asleep = ModelState(model=M, ready_replicas=1, asleep_replicas=1, tier=Tier.DISK)
    result = _plan(p_active=0.9, rate_rps=0.5, state=asleep)
    (wake,) = result.plan.of_type(EngineSleep)
    assert not wake.asleep
    assert wake.reason.startswith("wake: forecast ")


def test_observed_traffic_wakes_the_replica() -> None:
    asleep = ModelState(model=M, ready_replicas=1, asleep_replicas=1, observed_rps=1.0)
    (wake,) = _plan(p_active=0.0, state=asleep).plan.of_type(EngineSleep)
    assert not wake.asleep


def test_engines_that_cannot_sleep_or_models_without_replicas_get_no_sleep_action() -> None:
    idle = ModelState(model=M, ready_replicas=1, tier=Tier.DISK)
    no_sleep = EngineSpec(kind="vllm", port=8000, sleep=False)
    assert not _plan(p_active=0.02, state=idle, engine=no_sleep).plan.of_type(EngineSleep)
    assert not _plan(p_active=0.02, state=idle, engine=None).plan.of_type(EngineSleep)
    none_up = ModelState(model=M, tier=Tier.DISK)
    assert not _plan(p_active=0.02, state=none_up).plan.of_type(EngineSleep)


def test_engine_entries_in_the_catalog() -> None:
    catalog = parse_catalog(
        "models:\n  a:\n    engine: {kind: sglang, wake_s: 2.5}\n  b:\n    engine: {kind: vllm}\n"
    )
    assert catalog.spec(ModelId("a")).engine == EngineSpec(kind="sglang", port=30000, wake_s=2.5)
    assert catalog.spec(ModelId("b")).engine == EngineSpec(kind="vllm", port=8000)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("tgi", "must be a mapping"),
        ({"kind": "tgi"}, "kind must be one of"),
        ({"kind": "vllm", "port": 0}, "port must be"),
        ({"kind": "vllm", "level": 3}, "level must be 1 or 2"),
        ({"kind": "vllm", "sleep": "yes"}, "sleep must be true or false"),
        ({"kind": "vllm", "wake_s": -1}, "wake_s must be"),
        ({"kind": "vllm", "speed": 1}, "unknown fields"),
    ],
)
def test_bad_engine_entries_are_refused(entry: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_engine(entry, where="catalog: model 'm' engine")
