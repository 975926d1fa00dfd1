from __future__ import annotations

import numpy as np
import pytest

from common.ids import ModelId
from forecaster.types import Forecast, SeriesBatch
from planner.actions import Preload, ReplicaFloor, Tier
from planner.catalog import GB, Catalog
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
    # A cycle every 12th step fetches the steps completed since the last one (a daemon's tick
    # fetches what Prometheus has); the engine forecasts again only after new steps.
    assert engine.observed_steps == 12 * (599 // 12)
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


def test_the_plan_stands_between_cycles_and_the_load_scaler_acts_above_it() -> None:
    # 10-minute steps: a cycle per step, at ticks 0, 10, 20, ... Traffic stops at tick 30; the
    # cycle then sees the last busy step, and its reactive floor stands until the next cycle
    # (as a daemon's floor stands until its next tick); after that, with no forecast and no hold
    # worth its memory, nothing is planned and the load scaler's 5-minute window has passed.
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
    policy.reports = []
    run_policy(bench, policy, budget_gb=1e6)
    assert all(t >= 1 for t in policy.targets[29:40])
    assert policy.targets[40:43] == [0, 0, 0]
    floors = [
        [a.min_replicas for a in r.to_apply.of_type(ReplicaFloor)] for r in policy.reports[:5]
    ]
    assert floors[3] == [1]  # the cycle at tick 30 saw the last busy step
    assert floors[4] == [0]  # the one at tick 40 releases it


def test_the_simulated_cluster_applies_exactly_the_cycles_plan() -> None:
    trace = to_ticks(intermittent(6, 240, seed=4), seed=0)
    table = build_model_table(trace.models, Catalog(), CLUSTER)
    bench = BenchInput("t", trace, table, CLUSTER, default_budget_gb(trace, table), 0, 0)
    policy = PrewarmPolicy()
    policy.reports = []
    run_policy(bench, policy, budget_gb=bench.default_budget_gb)
    last = policy.reports[-1].to_apply
    decision = policy.applier.decision
    index = {m: i for i, m in enumerate(table.models)}
    for floor in last.of_type(ReplicaFloor):
        assert decision.target[index[floor.model]] == floor.min_replicas
    gpu = {p.model: p.value_per_byte for p in last.of_type(Preload) if p.tier is Tier.GPU}
    for model, per_byte in gpu.items():
        assert decision.priority[index[model]] == pytest.approx(per_byte * GB)
    assert decision.host is not None
    hosts = {p.model for p in last.of_type(Preload) if p.tier is Tier.HOST}
    assert {m for m, i in index.items() if decision.host[i]} == hosts
