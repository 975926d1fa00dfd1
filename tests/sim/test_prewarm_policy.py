from __future__ import annotations

import numpy as np
import pytest

from common.ids import ModelId
from forecaster.types import Forecast, SeriesBatch
from planner.catalog import Catalog
from planner.config import PlannerConfig
from prewarm.sim.bench import BenchInput, default_budget_gb, run_policy
from prewarm.sim.cluster import build_model_table
from prewarm.sim.engine import to_ticks
from prewarm.sim.policies import prewarm_policy
from prewarm.sim.policies.prewarm_policy import PrewarmPolicy
from tests.sim.helpers import CLUSTER, intermittent


class CountingEngine:
    """A stand-in forecast engine (no forecasts): counts what the policy asks of it."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.observed_steps = 0
        self.forecasts = 0

    def observe(self, batch: SeriesBatch) -> None:
        assert batch.step_s == self.step_s
        self.observed_steps += batch.steps

    def forecast(
        self, *, horizon_steps: int, quantiles: tuple[float, ...]
    ) -> dict[ModelId, Forecast]:
        self.forecasts += 1
        return {}


def test_long_traces_stretch_the_planning_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prewarm_policy, "MAX_PLANNING_CYCLES", 50)
    trace = to_ticks(intermittent(4, 600, seed=2), seed=0)
    table = build_model_table(trace.models, Catalog(), CLUSTER)
    bench = BenchInput("t", trace, table, CLUSTER, default_budget_gb(trace, table), 0, 0)
    engines: list[CountingEngine] = []

    def factory(step_s: float) -> CountingEngine:
        engines.append(CountingEngine(step_s))
        return engines[-1]

    result = run_policy(bench, PrewarmPolicy(engine_factory=factory), budget_gb=1e6)
    (engine,) = engines
    # Every completed step is observed; forecasts (and plans) happen every 12th step.
    assert engine.observed_steps == 599
    assert engine.forecasts == 1 + 599 // 12
    # Without forecasts the reactive floor and the idle-time record still serve everything.
    assert result.total_requests == trace.requests


class RecordingPolicy(PrewarmPolicy):
    """The prewarm policy, recording its first model's target every tick."""

    targets: list[int]

    def decide(self, obs):  # type: ignore[no-untyped-def]
        decision = super().decide(obs)
        self.targets.append(int(decision.target[0]))
        return decision


def test_the_reactive_floor_is_not_frozen_between_plans() -> None:
    # 10-minute steps: the simulator plans once per step. Traffic stops at tick 30, just as a
    # plan sees it; with no forecast and no hold worth its memory, the replica goes with the
    # load scaler's 5-minute window, not a whole planning interval later.
    rows = np.zeros((1, 6))
    rows[0, :3] = 600.0
    trace = to_ticks(
        SeriesBatch(models=(ModelId("a"),), start_s=0.0, step_s=600.0, counts=rows), seed=0
    )
    table = build_model_table(trace.models, Catalog(), CLUSTER)
    bench = BenchInput("t", trace, table, CLUSTER, default_budget_gb(trace, table), 0, 0)
    policy = RecordingPolicy(
        PlannerConfig(min_value_density=1e9), engine_factory=lambda step: CountingEngine(step)
    )
    policy.targets = []
    run_policy(bench, policy, budget_gb=1e6)
    assert policy.targets[29] >= 1
    assert policy.targets[37:40] == [0, 0, 0]


def test_forecast_replicas_stand_while_traffic_meets_the_forecast_with_no_wait() -> None:
    # scale_down_after_s=0: replicas above one go as soon as the traffic falls short of the
    # forecast, and not before (a zero wait once stripped them every tick).
    trace = to_ticks(
        SeriesBatch(
            models=(ModelId("a"),), start_s=0.0, step_s=60.0, counts=np.full((1, 3), 600.0)
        ),
        seed=0,
    )
    table = build_model_table(trace.models, Catalog(), CLUSTER)
    bench = BenchInput("t", trace, table, CLUSTER, default_budget_gb(trace, table), 0, 0)
    policy = PrewarmPolicy(
        PlannerConfig(scale_down_after_s=0.0), engine_factory=lambda step: CountingEngine(step)
    )
    run_policy(bench, policy, budget_gb=1e6)
    policy.plan_target = np.array([3])
    policy.expected_rps = np.array([10.0])
    assert policy._plan_target_now(np.array([600])).tolist() == [3]
    assert policy._plan_target_now(np.array([0])).tolist() == [1]
