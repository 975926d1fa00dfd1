"""The daemon and the simulator behind ``prewarm bench`` decide through the same cycle.

The simulator's ``prewarm`` policy is run over a small trace, and every cycle's inputs (the history
steps it fetched and the cluster snapshot it observed) are recorded. A daemon, built as
``prewarm run`` builds it (its own forecast engine, catalog, planner settings, gate and caps), is
then ticked on the same history and the same snapshots at the same times: its plans are identical
to the simulator's, cycle by cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from common.ids import ModelId
from forecaster.types import SeriesBatch
from planner.actions import ActionResult, WarmPlan
from planner.catalog import Catalog
from prewarm.cycle import step as cycle_step
from prewarm.cycle.interfaces import ClusterSnapshot
from prewarm.cycle.step import CycleInputs, CycleReport
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.sim.bench import BenchInput, default_budget_gb, run_policy
from prewarm.sim.cluster import build_model_table
from prewarm.sim.engine import to_ticks
from prewarm.sim.policies import prewarm_policy
from prewarm.sim.policies.prewarm_policy import PrewarmPolicy, _default_engine
from tests.sim.helpers import CLUSTER

pytestmark = pytest.mark.same_cycle

STEP_S = 60.0
HOURS = 8


def _trace() -> SeriesBatch:
    """A busy daily-shaped model, a 10-minute timer and a rare bursty one."""
    steps = HOURS * 60
    minutes = np.arange(steps)
    rng = np.random.default_rng(3)
    busy = rng.poisson(30 + 25 * np.sin(2 * np.pi * minutes / 240)).astype(np.float64)
    timer = np.zeros(steps)
    timer[::10] = 1.0
    rare = np.zeros(steps)
    rare[rng.choice(steps, size=12, replace=False)] = rng.integers(1, 20, size=12)
    return SeriesBatch(
        models=(ModelId("busy"), ModelId("timer"), ModelId("rare")),
        start_s=1_700_000_000.0,
        step_s=STEP_S,
        counts=np.vstack([busy, timer, rare]),
    )


class _Recorded:
    """What the simulator's cycle was given, in order."""

    def __init__(self) -> None:
        self.inputs: list[CycleInputs] = []
        self.reports: list[CycleReport] = []


class _ReplayedHistory:
    """The history the simulator fetched, handed to the daemon at the same moments."""

    def __init__(self, inputs: Sequence[CycleInputs]) -> None:
        self._by_time = {i.now_s: i.history for i in inputs}

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        return self._by_time[now_s]


class _ReplayedCluster:
    """The snapshots the simulator observed, shown to the daemon at the same moments."""

    def __init__(self, inputs: Sequence[CycleInputs]) -> None:
        self._by_time = {i.now_s: i.snapshot for i in inputs}

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        return self._by_time[now_s]


class _Recorder:
    """Applies nothing; keeps what the daemon applied."""

    def __init__(self) -> None:
        self.plans: list[WarmPlan] = []

    async def apply(self, plan: WarmPlan, *, dry_run: bool) -> Sequence[ActionResult]:
        self.plans.append(plan)
        return [ActionResult(action, "ok") for action in plan.actions]


def _run_simulator(monkeypatch: pytest.MonkeyPatch) -> tuple[PrewarmPolicy, _Recorded]:
    recorded = _Recorded()
    real_step = cycle_step.step

    def recording_step(inputs, state, config):  # type: ignore[no-untyped-def]
        result = real_step(inputs, state, config)
        recorded.inputs.append(inputs)
        recorded.reports.append(result.report)
        return result

    monkeypatch.setattr(prewarm_policy, "step", recording_step)
    trace = to_ticks(_trace(), seed=0)
    table = build_model_table(trace.models, Catalog(), CLUSTER)
    bench = BenchInput("t", trace, table, CLUSTER, default_budget_gb(trace, table), 0, 0)
    policy = PrewarmPolicy()
    run_policy(bench, policy, budget_gb=bench.default_budget_gb)
    return policy, recorded


async def test_the_daemon_and_the_simulator_make_identical_plans_from_the_same_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy, recorded = _run_simulator(monkeypatch)
    assert len(recorded.inputs) == HOURS * 60  # a cycle per one-minute step
    config = policy.cycle_config
    clock = [0.0]
    applied = _Recorder()
    daemon = Daemon(
        DaemonConfig(
            mode="active",
            tick_s=config.interval_s,
            quality_gate=config.quality_gate,
            budget=config.budget,
            autoscaler_cooldown_s=config.autoscaler_cooldown_s,
        ),
        source=_ReplayedHistory(recorded.inputs),
        engine=_default_engine(config.step_s),
        observer=_ReplayedCluster(recorded.inputs),
        applier=applied,
        catalog=config.catalog,
        planner_config=config.planner,
        horizon_s=policy.feed.horizon_steps * config.step_s,
        planning_quantile=config.planning_quantile,
        step_s=config.step_s,
        clock=lambda: clock[0],
    )
    for inputs, simulated in zip(recorded.inputs, recorded.reports, strict=True):
        clock[0] = inputs.now_s
        report = await daemon.tick()
        assert report.plan == simulated.plan
        assert daemon.published() is not None
        assert daemon.published().to_apply == simulated.to_apply  # type: ignore[union-attr]
        assert daemon.published().gated == simulated.gated  # type: ignore[union-attr]
    # The daemon applied what the simulator applied, tick by tick.
    assert applied.plans == [r.to_apply for r in recorded.reports]
    # The cycles were not trivial: replicas were planned, a model was held warm while idle, lead
    # times were learned from the starts the simulated cluster reported finished.
    last = recorded.reports[-1]
    assert any(p.target_replicas > 0 for p in last.model_plans.values())
    assert any(
        r.model_plans[ModelId("timer")].hold_gpu
        and r.model_plans[ModelId("timer")].floor_replicas == 0
        for r in recorded.reports
    )
    assert any(i.snapshot.stage_observations for i in recorded.inputs)
    assert last.lead.samples
