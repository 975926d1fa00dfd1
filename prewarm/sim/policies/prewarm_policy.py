"""The ``prewarm`` policy: the daemon's decision cycle, run over the simulated cluster.

Every cycle does what a daemon tick does: fetch the history steps completed since the last cycle
(:class:`prewarm.sim.cycle_io.SimHistory`), fold them into the forecast engine
(:class:`prewarm.cycle.forecasting.ForecastFeed`, the daemon's defaults), observe the cluster
(:class:`prewarm.sim.cycle_io.SimClusterObserver`), :func:`prewarm.cycle.step.step`, and apply the
plan (:class:`prewarm.sim.cycle_io.SimPlanApplier`). The planner starts from the catalog's stage
figures, as the daemon does, and learns lead times only from the starts the cluster reports
finished. The applied plan stands until the next cycle; between cycles only the reactive
autoscaler (the load scaler every policy shares) acts, as HPA or KEDA does between daemon ticks.

The cadence: a cycle per forecast step (at least a minute); a long trace stretches the interval to
keep a replay within :data:`MAX_PLANNING_CYCLES` cycles (the daemon's tick is 15 s; a replay of
every tick of a month-long trace would take hours). ``prewarm bench`` states the interval it used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from common.ids import ModelId
from forecaster.config import ForecasterConfig
from forecaster.engine import AutoForecaster
from forecaster.types import ForecastEngine
from planner.catalog import GB, Catalog
from planner.config import PlannerConfig
from prewarm.cycle.config import DEFAULT_TICK_S, BudgetConfig, CycleConfig
from prewarm.cycle.forecasting import ForecastFeed
from prewarm.cycle.step import CycleInputs, CycleReport, CycleState, step
from prewarm.sim.cluster import FloatArray, IntArray
from prewarm.sim.cycle_io import SimClusterObserver, SimHistory, SimPlanApplier, resolved
from prewarm.sim.engine import Decision, Observation, SimSetup
from prewarm.sim.policies.base import LoadScaler

LEAD_ALLOWANCE_S = 900.0
"""Forecast horizon beyond the planning interval (covers the longest lead time planned for)."""
MAX_PLANNING_CYCLES = 3000
"""A replay runs the cycle at most about this many times: long traces stretch the interval."""


@dataclass(slots=True)
class ForecastLog:
    """Forecasts made for the busiest models, for the bench's forecast-vs-actual panel."""

    models: tuple[int, ...] = ()
    times_s: list[float] = field(default_factory=list)
    predicted: list[FloatArray] = field(default_factory=list)
    """Forecast requests per second for ``models`` at each time (one-step-ahead mean)."""


def _default_engine(step_s: float) -> ForecastEngine:
    defaults = ForecasterConfig()
    return AutoForecaster(
        step_s,
        history_window_s=defaults.history_window_s,
        planning_quantile=defaults.planning_quantile,
    )


def budget_per_cycle(interval_s: float) -> BudgetConfig:
    """The daemon's per-tick caps over one simulated cycle: a daemon ticking every
    ``DaemonConfig.tick_s`` would have run ``interval / tick`` ticks, each allowed its caps."""
    ticks = max(1.0, interval_s / DEFAULT_TICK_S)
    caps = BudgetConfig()
    return BudgetConfig(
        max_nodes_added=math.ceil(caps.max_nodes_added * ticks),
        max_prepulls=math.ceil(caps.max_prepulls * ticks),
        max_gpu_bytes=math.ceil(caps.max_gpu_bytes * ticks),
    )


class PrewarmPolicy:
    """The daemon's cycle. ``engine_factory(step_s)`` builds the forecast engine."""

    def __init__(
        self,
        config: PlannerConfig | None = None,
        *,
        engine_factory: Callable[[float], ForecastEngine] = _default_engine,
        log_models: int = 4,
    ) -> None:
        self.name = "prewarm"
        self.base_config = config or PlannerConfig()
        self.engine_factory = engine_factory
        self.log_models = log_models
        self._busiest: tuple[int, ...] = ()
        self.forecast_log = ForecastLog()
        self.reports: list[CycleReport] | None = None
        """Set to a list to keep every cycle's report (tests)."""

    def bind(self, setup: SimSetup) -> None:
        """Start a run on ``setup`` with an empty cycle state."""
        self.setup = setup
        step_ticks = max(1, round(max(60.0, setup.source_step_s) / setup.dt_s))
        self.step_s = step_ticks * setup.dt_s
        steps = setup.ticks / step_ticks
        self.plan_every = max(1, math.ceil(steps / MAX_PLANNING_CYCLES))
        self.interval_s = self.plan_every * self.step_s
        self.steps_since_plan = 0
        self.step_ticks = step_ticks
        self.ticks_in_step = 0
        defaults = ForecasterConfig()
        planner = self.base_config.model_copy(
            # The operator's GPU memory budget: the simulated cluster's.
            update={"gpu_memory_budget_bytes": round(setup.budget_gb * GB)}
        )
        self.cycle_config = CycleConfig(
            planner=planner,
            catalog=Catalog(specs={s.model: s for s in setup.table.specs}),
            interval_s=self.interval_s,
            step_s=self.step_s,
            planning_quantile=defaults.planning_quantile,
            budget=budget_per_cycle(self.interval_s),
        )
        self.state = CycleState.initial(self.cycle_config)
        self.feed = ForecastFeed(
            self.engine_factory(self.step_s),
            step_s=self.step_s,
            horizon_s=max(defaults.horizon_s, self.interval_s + LEAD_ALLOWANCE_S),
            planning_quantile=defaults.planning_quantile,
        )
        self.history = SimHistory(setup, step_ticks=step_ticks)
        self.observer = SimClusterObserver(setup)
        self.applier = SimPlanApplier(setup)
        self.scaler = LoadScaler(setup.table, setup.dt_s)
        self.forecast_log = ForecastLog(models=self._busiest)
        if self.reports is not None:
            self.reports = []

    def log_busiest(self, counts: IntArray) -> None:
        """Record one-step-ahead forecasts of the busiest models (call before the run)."""
        total = counts.sum(axis=1)
        order = np.argsort(-total, kind="stable")[: self.log_models]
        self._busiest = tuple(int(i) for i in order)

    def decide(self, obs: Observation) -> Decision:
        """The standing plan's decision, the load scaler's replicas above it; a cycle first when
        one is due (the first tick, then every ``plan_every`` completed steps)."""
        load = self.scaler.update(obs.arrivals)
        self.observer.see(obs)
        due = obs.tick == 0
        if obs.tick > 0:
            self.history.record(obs.arrivals, tick_end_s=obs.now_s)
            self.ticks_in_step += 1
            if self.ticks_in_step == self.step_ticks:
                self.ticks_in_step = 0
                self.steps_since_plan += 1
                due = self.steps_since_plan >= self.plan_every
        if due:
            self.steps_since_plan = 0
            self.cycle(obs.now_s)
        standing = self.applier.decision
        return Decision(
            target=np.maximum(standing.target, load),
            priority=standing.priority,
            host=standing.host,
            prepull=standing.prepull,
            node_gpus=standing.node_gpus,
        )

    def cycle(self, now_s: float) -> CycleReport:
        """One daemon tick over the simulated cluster: fetch, observe, step, apply."""
        history = resolved(self.history.fetch(now_s=now_s))
        forecasts = self.feed.refresh(history)
        models = sorted(set(forecasts) | set(self.cycle_config.catalog.specs))
        snapshot = resolved(self.observer.observe(now_s=now_s, models=models))
        inputs = CycleInputs(now_s=now_s, forecasts=forecasts, snapshot=snapshot, history=history)
        result = step(inputs, self.state, self.cycle_config)
        self.state = result.state
        resolved(self.applier.apply(result.plan, dry_run=False))
        self._log(now_s, result.report)
        if self.reports is not None:
            self.reports.append(result.report)
        return result.report

    def _log(self, now_s: float, report: CycleReport) -> None:
        if not self.forecast_log.models:
            return
        models = self.setup.table.models
        row = np.zeros(len(self.forecast_log.models))
        for j, i in enumerate(self.forecast_log.models):
            forecast = report.forecasts.get(ModelId(models[i]))
            if forecast is not None and forecast.horizon:
                row[j] = float(forecast.mean[0]) / forecast.step_s
        self.forecast_log.times_s.append(now_s)
        self.forecast_log.predicted.append(row)

    def activation_delay_s(self, arrival_s: float) -> float:
        """The platform's activator starts a scaled-to-zero model at once."""
        return 0.0
