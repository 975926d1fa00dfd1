"""A fleet of rarely called models: the price of idle memory governs its warm holds.

Without forecasts (a stand-in engine), so the idle-time record and the price alone decide. Each
model is called a few times an hour, one request at a time: nearly every request wakes a model.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.ids import ModelId
from forecaster.types import Forecast, SeriesBatch
from planner import price
from planner.catalog import Catalog
from planner.config import PlannerConfig
from prewarm.sim.bench import BenchInput, default_budget_gb, run_policy
from prewarm.sim.cluster import build_model_table
from prewarm.sim.engine import SimResult, to_ticks
from prewarm.sim.policies.prewarm_policy import PrewarmPolicy
from tests.sim.helpers import CLUSTER, STEP_S


class NoForecasts:
    """A forecast engine that forecasts nothing."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s

    def observe(self, batch: SeriesBatch) -> None:
        return None

    def forecast(
        self, *, horizon_steps: int, quantiles: tuple[float, ...]
    ) -> dict[ModelId, Forecast]:
        return {}


def _sparse_bench() -> BenchInput:
    rng = np.random.default_rng(7)
    models, steps = 24, 240
    per_hour = rng.uniform(0.5, 6.0, size=models)
    counts = (rng.random((models, steps)) < per_hour[:, None] / 60.0).astype(np.float64)
    batch = SeriesBatch(
        models=tuple(ModelId(f"adapter-{i}") for i in range(models)),
        start_s=0.0,
        step_s=STEP_S,
        counts=counts,
    )
    trace = to_ticks(batch, seed=0)
    table = build_model_table(trace.models, Catalog(), CLUSTER)
    return BenchInput("sparse", trace, table, CLUSTER, default_budget_gb(trace, table), 30, 0)


def _run(bench: BenchInput, idle_price: float) -> SimResult:
    policy = PrewarmPolicy(PlannerConfig(idle_price=idle_price), engine_factory=NoForecasts)
    return run_policy(bench, policy, budget_gb=bench.default_budget_gb)


def test_a_dearer_idle_price_holds_less_on_a_sparse_fleet() -> None:
    bench = _sparse_bench()
    cheap, dear = _run(bench, 0.0001), _run(bench, 0.003)
    cheap_s, dear_s = cheap.summary(), dear.summary()
    assert dear_s["idle_gpu_gb_hours"] < 0.7 * cheap_s["idle_gpu_gb_hours"]
    assert dear_s["cold_start_ratio"] > cheap_s["cold_start_ratio"]


def test_priced_by_requests_alone_the_sparse_fleet_ignored_the_price(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rule before wake-ups were counted: the fleet's few requests made idle memory so cheap
    # that the floor (min_value_density) decided alone, whatever idle_price said.
    monkeypatch.setattr(price, "WAKE_REQUESTS", 0.0)
    bench = _sparse_bench()
    cheap, dear = _run(bench, 0.0001), _run(bench, 0.003)
    assert dear.summary()["idle_gpu_gb_hours"] > 0.9 * cheap.summary()["idle_gpu_gb_hours"]
