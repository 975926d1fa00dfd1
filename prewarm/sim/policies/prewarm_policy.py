"""The ``prewarm`` policy: the forecaster and the planner the daemon runs, driven by the simulator.

Every planning interval (the forecast step, at least a minute) the newly completed steps of
observed arrivals go to the forecast engine, which forecasts every model; the planner turns the
forecasts, the observed state and the catalog into a :class:`planner.actions.WarmPlan`, and the
plan's actions are applied: replica floors as targets, GPU preloads' value density as eviction
priority, host preloads as the host tier, image pre-pulls, placeholder node capacity. Between
plans, the reactive floor (observed load, HPA-like) still acts every tick.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from common.ids import ModelId, PoolName
from forecaster.engine import AutoForecaster
from forecaster.types import Forecast, ForecastEngine, SeriesBatch
from planner.actions import ImagePrepull, NodeCapacity, Preload, ReplicaFloor, Tier
from planner.catalog import GB, Catalog
from planner.config import PlannerConfig, StageDefaults
from planner.leadtime import LeadTimeBook, Stage, StageObservation
from planner.planner import (
    STALE_FORECAST_RATIO,
    ModelState,
    PlanContext,
    PlannerState,
    PoolState,
    plan,
)
from planner.recency import IdleTimeRecord
from prewarm.sim.cluster import FloatArray, IntArray
from prewarm.sim.engine import Decision, Observation, SimSetup, StartRecord
from prewarm.sim.policies.base import LoadScaler

FORECAST_QUANTILES = (0.5, 0.9)
LEAD_ALLOWANCE_S = 900.0
MAX_PLANNING_CYCLES = 3000
"""A replay plans at most about this many times: long traces stretch the planning interval."""
"""Forecast horizon beyond the planning interval (covers the longest lead time planned for)."""


@dataclass(slots=True)
class ForecastLog:
    """Forecasts made for the busiest models, for the bench's forecast-vs-actual panel."""

    models: tuple[int, ...] = ()
    times_s: list[float] = field(default_factory=list)
    predicted: list[FloatArray] = field(default_factory=list)
    """Forecast requests per second for ``models`` at each time (one-step-ahead mean)."""


def _default_engine(step_s: float) -> ForecastEngine:
    return AutoForecaster(step_s=step_s)


class PrewarmPolicy:
    """Forecaster + planner. ``engine_factory(step_s)`` builds the forecast engine."""

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

    def bind(self, setup: SimSetup) -> None:
        table = setup.table
        self.setup = setup
        self.step_s = max(60.0, setup.source_step_s)
        self.step_ticks = max(1, round(self.step_s / setup.dt_s))
        self.step_s = self.step_ticks * setup.dt_s
        steps = setup.ticks / self.step_ticks
        self.plan_every = max(1, math.ceil(steps / MAX_PLANNING_CYCLES))
        self.interval_s = self.plan_every * self.step_s
        self.steps_since_plan = 0
        self.engine = self.engine_factory(self.step_s)
        self.catalog = Catalog(specs={s.model: s for s in table.specs})
        pool_specs = setup.cluster.pools
        stages = StageDefaults(
            node_provision_s=pool_specs[0].provision_median_s
            * math.exp(1.2816 * pool_specs[0].provision_sigma),
            container_start_s=pool_specs[0].container_start_s,
            image_pull_gbps=pool_specs[0].image_pull_gbps,
            remote_gbps=pool_specs[0].remote_gbps,
            disk_gbps=pool_specs[0].disk_gbps,
            host_to_gpu_gbps=pool_specs[0].host_to_gpu_gbps,
            compile_cached_fraction=pool_specs[0].compile_cached_fraction,
        )
        self.config = self.base_config.model_copy(
            update={
                "gpu_memory_budget_bytes": round(setup.budget_gb * GB),
                "stages": stages,
            }
        )
        self.state = PlannerState(
            lead=LeadTimeBook(
                quantile=self.config.lead_quantile, min_samples=self.config.lead_min_samples
            )
        )
        m = table.size
        self.scaler = LoadScaler(table, setup.dt_s)
        self.pending_counts = np.zeros((m, self.step_ticks))
        self.pending_fill = 0
        self.observed_steps = 0
        self.forecasts: dict[ModelId, Forecast] = {}
        self.plan_target = np.zeros(m, np.int64)
        self.expected_rps = np.zeros(m)
        """Each model's expected request rate now, from the last plan's forecasts."""
        self.low_ticks = np.zeros(m, np.int64)
        """Consecutive ticks in which the observation contradicted ``expected_rps``."""
        self.priority = np.zeros(m)
        self.host = np.zeros(m, np.bool_)
        self.prepull = np.zeros(m, np.bool_)
        self.node_gpus = np.zeros(len(pool_specs), np.int64)
        self.recent_rate = np.zeros(m)
        self.idle = IdleTimeRecord(m)
        self.requests_seen = np.zeros(m)
        self.active_ticks = np.zeros(m)
        self.forecast_log = ForecastLog(models=self._busiest)
        self._image_index: dict[tuple[PoolName, str], list[int]] = {}
        for i, spec in enumerate(table.specs):
            self._image_index.setdefault((spec.node_pool, spec.image), []).append(i)
        self._index = {model: i for i, model in enumerate(table.models)}

    # -- learning -------------------------------------------------------------------------------

    def _learn(self, finished: list[StartRecord]) -> None:
        if not finished:
            return
        table = self.setup.table
        items: list[StageObservation] = []
        for record in finished:
            spec = table.specs[record.model]
            pool = str(spec.node_pool)
            if record.new_node:
                items.append(StageObservation(Stage.NODE, pool, record.node_s))
            if record.image_s > 0:
                items.append(
                    StageObservation(Stage.IMAGE, spec.image, record.image_s, spec.image_gb)
                )
            stage = (Stage.WEIGHTS_REMOTE, Stage.WEIGHTS_DISK, Stage.WEIGHTS_HOST)[record.tier]
            items.append(StageObservation(stage, pool, record.weights_s, spec.weights_gb))
            cached = "cached" if record.tier >= 1 else "cold"
            items.append(
                StageObservation(Stage.COMPILE, f"{spec.model}|{cached}", record.compile_s)
            )
        self.state = dataclasses.replace(self.state, lead=self.state.lead.observe(items))

    def _fold(self, arrivals: IntArray, now_s: float) -> bool:
        """Add the last tick to the current step; True when a step completed and was observed."""
        self.pending_counts[:, self.pending_fill] = arrivals
        self.pending_fill += 1
        if self.pending_fill < self.step_ticks:
            return False
        counts = self.pending_counts.sum(axis=1, keepdims=True)
        start = now_s - self.step_s
        self.engine.observe(
            SeriesBatch(
                models=self.setup.table.models, start_s=start, step_s=self.step_s, counts=counts
            )
        )
        self.pending_fill = 0
        self.observed_steps += 1
        return True

    # -- deciding -------------------------------------------------------------------------------

    def _plan(self, obs: Observation) -> None:
        setup = self.setup
        table = setup.table
        horizon = math.ceil((self.interval_s + LEAD_ALLOWANCE_S) / self.step_s) + 1
        self.forecasts = self.engine.forecast(horizon_steps=horizon, quantiles=FORECAST_QUANTILES)
        self._log(obs.now_s)
        tiers = (Tier.REMOTE, Tier.DISK, Tier.HOST)
        p_observed = self.idle.p_within(obs.now_s, self.interval_s + obs.lead_s)
        active_rps = self.requests_seen / np.maximum(self.active_ticks, 1.0) / self.setup.dt_s
        last_request = [
            float(value) if math.isfinite(value) else None for value in self.idle.last_s.tolist()
        ]
        gaps = np.rint(self.idle.gaps()).astype(np.int64).tolist()
        models = {
            model: ModelState(
                model=model,
                ready_replicas=int(obs.ready[i]),
                starting_replicas=int(obs.pending[i]),
                tier=tiers[int(obs.tier[i])],
                image_cached=bool(obs.image_cached[i]),
                observed_rps=float(self.recent_rate[i]),
                p_observed=float(p_observed[i]),
                last_request_s=last_request[i],
                idle_gaps=gaps[i],
                active_rps=float(active_rps[i]),
            )
            for i, model in enumerate(table.models)
        }
        pools = {
            spec.name: PoolState(
                pool=spec.name,
                free_gpus=int(obs.free_gpus[p]),
                gpu_memory_bytes=round(spec.gpu_memory_gb * GB),
                host_capacity_bytes=round(spec.host_cache_gb_per_node * GB * max(1, obs.nodes[p])),
            )
            for p, spec in enumerate(setup.cluster.pools)
        }
        ctx = PlanContext(
            now_s=obs.now_s,
            interval_s=self.interval_s,
            forecasts=self.forecasts,
            models=models,
            catalog=self.catalog,
            config=self.config,
            pools=pools,
        )
        result = plan(ctx, self.state)
        self.state = result.state
        target = np.zeros(table.size, np.int64)
        priority = np.zeros(table.size)
        host = np.zeros(table.size, np.bool_)
        prepull = np.zeros(table.size, np.bool_)
        node_gpus = np.zeros(len(setup.cluster.pools), np.int64)
        index = self._index
        for action in result.plan.actions:
            if isinstance(action, ReplicaFloor):
                target[index[action.model]] = action.min_replicas
            elif isinstance(action, Preload):
                if action.tier == Tier.GPU:
                    priority[index[action.model]] = action.value_per_byte
                elif action.tier == Tier.HOST:
                    host[index[action.model]] = True
            elif isinstance(action, ImagePrepull):
                prepull[self._image_index.get((action.pool, action.image), [])] = True
            elif isinstance(action, NodeCapacity):
                node_gpus[setup.cluster.pool_index(action.pool)] += action.gpus
        for model, explained in result.models.items():
            i = index[model]
            if priority[i] == 0:
                priority[i] = explained.value_density / GB
        # Between plans only the planner's own replicas (forecast ones, warm holds) stand: the
        # reactive floor in the plan is observed load at planning time, which the load scaler
        # follows every tick (the daemon re-plans every tick); frozen until the next plan it
        # would hold a replica up to a planning interval after the traffic has gone.
        own = np.zeros(table.size, np.int64)
        for model, count in result.state.planned.items():
            own[index[model]] = count
        target = np.minimum(target, own)
        self.plan_target = target
        self.expected_rps = np.array(
            [
                float(f.mean[0]) / f.step_s if f is not None and f.horizon else 0.0
                for f in (self.forecasts.get(model) for model in table.models)
            ]
        )
        self.priority = priority
        self.host = host
        self.prepull = prepull
        self.node_gpus = node_gpus

    def _log(self, now_s: float) -> None:
        if not self.forecast_log.models:
            return
        models = self.setup.table.models
        row = np.zeros(len(self.forecast_log.models))
        for j, i in enumerate(self.forecast_log.models):
            forecast = self.forecasts.get(models[i])
            if forecast is not None:
                row[j] = float(forecast.mean[0]) / forecast.step_s
        self.forecast_log.times_s.append(now_s)
        self.forecast_log.predicted.append(row)

    def log_busiest(self, counts: IntArray) -> None:
        """Record one-step-ahead forecasts of the busiest models (call before the run)."""
        total = counts.sum(axis=1)
        order = np.argsort(-total, kind="stable")[: self.log_models]
        self._busiest = tuple(int(i) for i in order)

    def decide(self, obs: Observation) -> Decision:
        self._learn(obs.finished)
        dt = self.setup.dt_s
        self.recent_rate = obs.arrivals / dt
        self.idle.observe(obs.arrivals > 0, end_s=obs.now_s)
        self.requests_seen += obs.arrivals
        self.active_ticks += obs.arrivals > 0
        load = self.scaler.update(obs.arrivals)
        if obs.tick == 0:
            self._plan(obs)
        elif self._fold(obs.arrivals, obs.now_s):
            self.steps_since_plan += 1
            if self.steps_since_plan >= self.plan_every:
                self.steps_since_plan = 0
                self._plan(obs)
        target = np.maximum(self._plan_target_now(obs.arrivals), load)
        return Decision(
            target=target,
            priority=self.priority,
            host=self.host,
            prepull=self.prepull,
            node_gpus=self.node_gpus,
        )

    def _plan_target_now(self, arrivals: IntArray) -> IntArray:
        """The plan's targets, less the replicas above one of models whose traffic has stayed
        below :data:`planner.planner.STALE_FORECAST_RATIO` of the forecast for
        ``scale_down_after_s``: the daemon re-plans every tick on fresh observations, and this is
        what such a re-plan would do between the simulator's (capped) planning cycles."""
        low = arrivals / self.setup.dt_s < STALE_FORECAST_RATIO * self.expected_rps
        self.low_ticks = np.where(low, self.low_ticks + 1, 0)
        stale = (self.low_ticks > 0) & (
            self.low_ticks * self.setup.dt_s >= self.config.scale_down_after_s
        )
        result: IntArray = np.where(stale & (self.plan_target > 1), 1, self.plan_target)
        return result

    def activation_delay_s(self, arrival_s: float) -> float:
        return 0.0
