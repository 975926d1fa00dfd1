from __future__ import annotations

import pytest

from common.ids import ModelId
from forecaster.types import Forecast, SeriesBatch
from planner.catalog import Catalog
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
