"""The daemon's tick: history -> forecasts -> quality gate -> plan -> budget caps -> apply.

Owns: the order of one tick, what is kept between ticks (forecasts, planner state, live quality),
and the lifecycle of the loop (stop event, a per-tick time budget on shutdown). Must not: talk to
Prometheus, Kubernetes or the agents directly; those are the ``HistorySource``, ``ClusterObserver``
and ``PlanApplier`` passed in (real ones in :mod:`prewarm.daemon.wiring`, test ones in tests).

Failure policy: a history source that fails with :class:`TemporaryError` skips the forecast
refresh, keeps the last good forecasts marked stale and still plans (the reactive floor comes from
the cluster observation); an observer or applier failure skips the rest of the tick; a tick never
raises out of :meth:`Daemon.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import structlog

from actuator.apply import ActionResult
from common.errors import NotFound, PrewarmError, TemporaryError
from common.ids import ModelId, NodeName, PoolName
from forecaster.types import Forecast, ForecastEngine, SeriesBatch
from planner.actions import Action, Evict, NodeCapacity, Preload, ReplicaFloor, Tier, WarmPlan
from planner.catalog import Catalog
from planner.config import PlannerConfig
from planner.leadtime import Stage, StageObservation
from planner.planner import (
    ModelPlan,
    ModelState,
    NodeState,
    PlanContext,
    PlannerState,
    PoolState,
    plan,
    workload_for,
)
from planner.recency import ModelIdleRecords
from prewarm.control.overrides import ActiveOverrides, ControlState, active_overrides, apply_floors
from prewarm.control.view import Explanation, build_explanation
from prewarm.daemon.budget import cap_plan
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.metrics import DaemonMetrics
from prewarm.daemon.quality import LiveAccuracy, passes_gate

log = structlog.get_logger(__name__)

MANUAL_VALUE_PER_BYTE = 1e-3
"""Value density given to manually requested holds: far above any forecast-derived one, so the
agent evicts them last."""

DEFAULT_LEAD_S = 120.0
"""Lead time assumed for a model's idle-time window before the planner has computed one."""


class HistorySource(Protocol):
    """Where request history comes from (Prometheus in production)."""

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        """New complete steps since the last call (None: nothing new); TemporaryError if down."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What the cluster looks like now, as the planner needs it."""

    models: Mapping[ModelId, ModelState]
    pools: Mapping[PoolName, PoolState]
    nodes: tuple[NodeState, ...] = ()
    placeholder_gpus: Mapping[PoolName, int] = field(default_factory=dict)
    stage_observations: tuple[StageObservation, ...] = ()


class ClusterObserver(Protocol):
    """Reads the cluster (workload replicas, pools, agents' holdings)."""

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """A snapshot covering at least ``models``."""
        ...


ActionOutcome = ActionResult
"""The result of applying one action (the actuator's type): ok, dry_run, error or skipped."""


class PlanApplier(Protocol):
    """Applies a plan to the cluster and the agents (the actuator)."""

    async def apply(self, plan: WarmPlan, *, dry_run: bool) -> Sequence[ActionOutcome]:
        """Apply every action idempotently; one outcome per action."""
        ...


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did (for logs, tests and the control API)."""

    now_s: float
    fresh: bool
    models: int
    plan: WarmPlan | None
    applied: tuple[ActionOutcome, ...]
    deferred: int
    gated: frozenset[ModelId]


class Daemon:
    """One prewarm daemon process. Also serves the control API's read side (a ``DaemonView``)."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        source: HistorySource,
        engine: ForecastEngine,
        observer: ClusterObserver,
        applier: PlanApplier | None,
        catalog: Catalog,
        planner_config: PlannerConfig,
        horizon_s: float,
        planning_quantile: float,
        step_s: float,
        metrics: DaemonMetrics | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        leader_address: Callable[[], str | None] = lambda: None,
        control_state: Callable[[], Awaitable[ControlState]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._source = source
        self._engine = engine
        self._observer = observer
        self._applier = applier
        self._catalog = catalog
        self._planner_config = planner_config
        self._step_s = step_s
        self._horizon_steps = max(1, math.ceil(horizon_s / step_s))
        self._planning_quantile = planning_quantile
        self._quantiles = tuple(sorted({0.1, 0.5, planning_quantile}))
        self.metrics = metrics if metrics is not None else DaemonMetrics()
        self._is_leader = is_leader
        self._leader_address = leader_address
        self._control_state = control_state
        self._overrides = ActiveOverrides(now_s=0.0)
        self._frozen: dict[ModelId, tuple[Action, ...]] = {}
        self._clock = clock
        self._accuracy = LiveAccuracy(window_steps=config.quality_gate.window_steps)
        self._planner_state = PlannerState()
        self._forecasts: dict[ModelId, Forecast] = {}
        self._model_plans: Mapping[ModelId, ModelPlan] = {}
        self._plan: WarmPlan | None = None
        self._observed_rps: dict[ModelId, float] = {}
        self._last_traffic_s: dict[ModelId, float] = {}
        """Start of each model's latest step with requests."""
        self._step_uncounted = False
        """A step was observed whose requests are not counted as warm or cold yet."""
        self._silence_before_s: dict[ModelId, float] = {}
        """Seconds without requests before each model's latest observed step, if it had some
        (``inf`` for a model's first requests)."""
        self._idle_records = ModelIdleRecords()
        self._gated: frozenset[ModelId] = frozenset()
        self._gpu_bytes_planned = 0
        self._pools_seen: set[str] = set()
        self._ticks_ok = 0
        self.metrics.active_mode.set(1 if config.mode == "active" else 0)

    # -- read side (DaemonView) -------------------------------------------------------------

    def forecasts(self) -> Mapping[ModelId, Forecast]:
        """The latest forecast per model (stale ones marked)."""
        return dict(self._forecasts)

    def plan(self) -> WarmPlan | None:
        """The latest plan, or None before the first tick."""
        return self._plan

    def model_plans(self) -> Mapping[ModelId, ModelPlan]:
        """The planner's per-model numbers from the latest tick."""
        return dict(self._model_plans)

    def known_models(self) -> frozenset[ModelId]:
        """Models seen in history or the catalog."""
        return frozenset(self._forecasts) | frozenset(self._catalog.specs)

    def gated_models(self) -> frozenset[ModelId]:
        """Models the quality gate currently sends back to reactive handling."""
        return self._gated

    def is_leader(self) -> bool:
        """Whether this replica may act."""
        return self._is_leader()

    def leader_address(self) -> str | None:
        """``host:port`` of the leader's control API (from the Lease), or None when unknown."""
        return self._leader_address()

    def observed_rps(self, model: ModelId) -> float | None:
        """The latest observed request rate of ``model`` (requests/s), or None if unknown."""
        return self._observed_rps.get(model)

    def overrides(self) -> ActiveOverrides:
        """The manual requests, pins and pauses in force at the latest tick."""
        return self._overrides

    def explain(self, model: ModelId) -> Explanation:
        """Why the plan holds what it holds for ``model``; :class:`NotFound` if unknown."""
        if model not in self.known_models():
            raise NotFound(
                f"unknown model {model!r}: prewarm knows {len(self.known_models())} models; "
                "check the name against `prewarm plan`"
            )
        spec = self._catalog.spec(model)
        explanation = build_explanation(
            model,
            forecast=self._forecasts.get(model),
            model_plan=self._model_plans.get(model),
            plan=self._plan,
            quantile=self._planning_quantile,
            max_replicas=spec.max_replicas,
            gpu_bytes_planned=self._gpu_bytes_planned,
            gpu_budget_bytes=self._planner_config.gpu_memory_budget_bytes,
            gated=model in self._gated,
        )
        extra = self._overrides.describe(model)
        if not extra:
            return explanation
        return replace(explanation, constraints=(*explanation.constraints, *extra))

    def ready(self) -> bool:
        """Ready once one tick completed (probes use this)."""
        return self._ticks_ok > 0

    # -- one tick ----------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        """Run one tick. Raises only for programming errors; I/O failures are handled."""
        started = time.perf_counter()
        now_s = self._clock()
        fresh = await self._refresh_forecasts(now_s)
        gated = self._quality_gate()
        planned_forecasts = {m: f for m, f in self._forecasts.items() if m not in gated}
        models = sorted(set(self._forecasts) | set(self._catalog.specs))
        try:
            snapshot = await self._observer.observe(now_s=now_s, models=models)
        except (PrewarmError, OSError) as error:
            log.warning("cluster observation failed; tick skipped", error=str(error))
            self.metrics.ticks.labels(result="skipped").inc()
            return TickReport(now_s, fresh, len(models), None, (), 0, gated)
        self._count_warm_requests(snapshot)
        self._pools_seen.update(snapshot.pools)
        state = dataclasses.replace(
            self._planner_state,
            lead=self._planner_state.lead.observe(snapshot.stage_observations),
        )
        # The idle-time evidence the simulator's prewarm policy gives the planner too, over the
        # planning window with each model's lead time from the last plan.
        p_observed = self._idle_records.p_within(
            now_s,
            {
                model: self.config.tick_s
                + (known.lead_s if (known := self._model_plans.get(model)) else DEFAULT_LEAD_S)
                for model in models
            },
        )
        model_states = {
            model: replace(
                _with_rate(snapshot.models.get(model), model, self._observed_rps.get(model, 0.0)),
                p_observed=p_observed[model],
                last_request_s=self._idle_records.last_request_s(model),
                idle_gaps=self._idle_records.gaps(model),
            )
            for model in models
        }
        context = PlanContext(
            now_s=now_s,
            interval_s=self.config.tick_s,
            forecasts=planned_forecasts,
            models=model_states,
            catalog=self._catalog,
            config=self._planner_config,
            pools=snapshot.pools,
            nodes=snapshot.nodes,
        )
        result = plan(context, state)
        self._planner_state = result.state
        self._model_plans = result.models
        self._gpu_bytes_planned = result.gpu_bytes
        overrides = await self._load_overrides(now_s)
        warm_plan = self._with_overrides(result.plan, overrides)
        self._plan = warm_plan
        capped = cap_plan(
            warm_plan, self.config.budget, current_placeholder_gpus=snapshot.placeholder_gpus
        )
        outcomes = await self._apply(capped.plan) if not overrides.global_pause else []
        for action, _reason in capped.deferred:
            self.metrics.actions.labels(type=_kind(action), result="skipped_budget").inc()
        self._publish_plan(warm_plan, state)
        self._ticks_ok += 1
        self.metrics.ticks.labels(result="ok").inc()
        self.metrics.tick_seconds.observe(time.perf_counter() - started)
        return TickReport(
            now_s, fresh, len(models), warm_plan, tuple(outcomes), len(capped.deferred), gated
        )

    async def _load_overrides(self, now_s: float) -> ActiveOverrides:
        """The manual state in force now; on a store failure the previous one is kept."""
        if self._control_state is None:
            return self._overrides
        try:
            state = await self._control_state()
        except (PrewarmError, OSError) as error:
            log.warning("control state unavailable; keeping the last one", error=str(error))
            return self._overrides

        def lead_s(model: ModelId) -> float:
            # A request counts from its start minus the model's lead time, plus one tick: the
            # next tick may come up to a tick later, and the replicas must be ready at the start.
            planned = self._model_plans.get(model)
            return (planned.lead_s if planned is not None else 0.0) + self.config.tick_s

        self._overrides = active_overrides(state, now_s, lead_time_s=lead_s)
        return self._overrides

    def _with_overrides(self, warm_plan: WarmPlan, overrides: ActiveOverrides) -> WarmPlan:
        """The plan with manual floors and tier holds in force, and paused models frozen.

        Manual requests are planner inputs with an expiry: a floor raises the model's
        ``ReplicaFloor`` (or adds one); a tier request or pin adds a ``Preload`` at that tier when
        the plan has none at it or faster. A paused model keeps exactly the actions it had when it
        was paused (taking them away would be an action too).
        """
        with_floors = apply_floors(
            warm_plan, overrides, workload_of=lambda m: workload_for(self._catalog.spec(m))
        )
        actions = list(with_floors.actions)
        for model, target in overrides.tiers.items():
            held = any(
                isinstance(a, Preload) and a.model == model and a.tier >= target.tier
                for a in actions
            )
            if held or target.tier <= Tier.DISK:
                continue
            spec = self._catalog.spec(model)
            actions.append(
                Preload(
                    model=model,
                    node=NodeName(str(spec.node_pool)),
                    tier=target.tier,
                    bytes=spec.weights_bytes,
                    deadline_s=warm_plan.now_s,
                    value_per_byte=MANUAL_VALUE_PER_BYTE,
                    reason=target.reason,
                    value=0.0,
                )
            )
        paused = {m for m in self.known_models() if overrides.is_paused(m)}
        kept = [a for a in actions if _model_of(a) not in paused]
        for model in paused:
            kept.extend(self._frozen.get(model, ()))
        by_model: dict[ModelId, list[Action]] = {}
        for action in kept:
            owner = _model_of(action)
            if owner is not None and owner not in paused:
                by_model.setdefault(owner, []).append(action)
        self._frozen.update({model: tuple(group) for model, group in by_model.items()})
        return WarmPlan(now_s=warm_plan.now_s, actions=tuple(kept))

    async def _refresh_forecasts(self, now_s: float) -> bool:
        try:
            batch = await self._source.fetch(now_s=now_s)
        except TemporaryError as error:
            log.warning("history source unavailable; keeping stale forecasts", error=str(error))
            self._forecasts = {m: _stale(f) for m, f in self._forecasts.items()}
            for model in self._forecasts:
                self.metrics.forecast_stale.labels(model=model).set(1)
            return False
        if batch is not None and batch.steps > 0:
            self._engine.observe(batch)
            self._score(batch)
            self._step_uncounted = True
        forecasts = self._engine.forecast(
            horizon_steps=self._horizon_steps, quantiles=self._quantiles
        )
        for model in set(self._forecasts) - set(forecasts):
            self.metrics.forget_model(model)
            self._accuracy.forget(model)
        known_before = set(self._forecasts)
        self._forecasts = dict(forecasts)
        horizons = [round(h / self._step_s) for h in self.config.forecast_horizons_s]
        for model, forecast in forecasts.items():
            if model not in known_before:
                # Initialise the per-model counters at 0, so rate() and increase() see the
                # series from its first sample instead of missing the first increment.
                for counter in (
                    self.metrics.requests_warm,
                    self.metrics.requests_cold,
                    self.metrics.cold_starts_avoided,
                ):
                    counter.labels(model=model)
            self.metrics.forecast_stale.labels(model=model).set(0)
            levels = {"mean": forecast.mean}
            levels.update({f"{q:g}": forecast.quantile(q) for q in forecast.quantiles})
            self.metrics.publish_forecast(
                model, step_s=forecast.step_s, horizons_steps=horizons, levels=levels
            )
            self._accuracy.record_forecast(
                model,
                step_start_s=forecast.start_s,
                mean=float(forecast.mean[0]),
                planning_quantile=float(forecast.quantile(self._planning_quantile)[0]),
            )
        return True

    def _score(self, batch: SeriesBatch) -> None:
        """Score earlier one-step forecasts against the batch and remember observed rates."""
        for row, model in enumerate(batch.models):
            series = batch.counts[row]
            self._idle_records.observe_series(
                model, series, start_s=batch.start_s, step_s=batch.step_s
            )
            for column in np.flatnonzero(~np.isnan(series)):
                step_start = batch.start_s + float(column) * batch.step_s
                self._accuracy.record_actual(
                    model, step_start_s=step_start, actual=float(series[column])
                )
                if series[column] > 0:
                    last = self._last_traffic_s.get(model)
                    silence = math.inf if last is None else step_start - last - batch.step_s
                    self._silence_before_s[model] = silence
                    self._last_traffic_s[model] = step_start
                else:
                    self._silence_before_s.pop(model, None)
            valid = series[~np.isnan(series)]
            if valid.size:
                rate = float(valid[-1]) / batch.step_s
                self._observed_rps[model] = rate
                self.metrics.observed_rps.labels(model=model).set(rate)

    def _quality_gate(self) -> frozenset[ModelId]:
        gate = self.config.quality_gate
        gated = set()
        for model in self._forecasts:
            quality = self._accuracy.quality(model)
            self.metrics.forecast_error.labels(model=model).set(quality.error_ratio)
            self.metrics.under_forecast.labels(model=model).set(quality.under_forecast_ratio)
            ok = passes_gate(
                quality,
                min_steps=gate.min_steps,
                max_error_ratio=gate.max_error_ratio,
                max_under_forecast_ratio=gate.max_under_forecast_ratio,
            )
            self.metrics.reactive_fallback.labels(model=model).set(0 if ok else 1)
            if not ok:
                gated.add(model)
        if gated - self._gated:
            log.warning("models fall back to reactive", models=sorted(gated - self._gated))
        self._gated = frozenset(gated)
        return self._gated

    def _count_warm_requests(self, snapshot: ClusterSnapshot) -> None:
        """Count the latest observed step's requests as warm or cold by the replicas seen now,
        once per step (ticks may come more often than steps)."""
        if not self._step_uncounted:
            return
        self._step_uncounted = False
        for model, rate in self._observed_rps.items():
            if rate <= 0:
                continue
            count = rate * self._step_s
            state = snapshot.models.get(model)
            warm = state is not None and state.ready_replicas > 0
            (self.metrics.requests_warm if warm else self.metrics.requests_cold).labels(
                model=model
            ).inc(count)
            # Silent for longer than the autoscaler's cooldown: it would have scaled to zero.
            silence = self._silence_before_s.get(model, 0.0)
            if warm and silence > self.config.autoscaler_cooldown_s:
                self.metrics.cold_starts_avoided.labels(model=model).inc()

    async def _apply(self, capped: WarmPlan) -> list[ActionOutcome]:
        if self._applier is None or not self.is_leader():
            return []  # a follower only forecasts and plans; the leader acts
        dry_run = self.config.mode != "active"  # advisory: the API server validates, stores nothing
        try:
            outcomes = list(await self._applier.apply(capped, dry_run=dry_run))
        except (PrewarmError, OSError) as error:
            log.warning("applying the plan failed; retrying next tick", error=str(error))
            for action in capped.actions:
                self.metrics.actions.labels(type=_kind(action), result="error").inc()
            return []
        for outcome in outcomes:
            self.metrics.actions.labels(type=_kind(outcome.action), result=outcome.result).inc()
        return outcomes

    def _publish_plan(self, warm_plan: WarmPlan, state: PlannerState) -> None:
        counts: dict[str, int] = {}
        for action in warm_plan.actions:
            counts[_kind(action)] = counts.get(_kind(action), 0) + 1
        for kind in ("NodeCapacity", "ImagePrepull", "ReplicaFloor", "Preload", "Evict"):
            self.metrics.plan_actions.labels(type=kind).set(counts.get(kind, 0))
        # Per-stage lead: the planned (learned-quantile or default) seconds of the fixed-time
        # stages, and the longest whole chain the planner worked with this tick.
        stages = self._planner_config.stages
        self.metrics.lead_time.labels(stage="node").set(
            max(
                [
                    state.lead.seconds(Stage.NODE, pool, stages.node_provision_s)
                    for pool in self._pools_seen
                ]
                or [stages.node_provision_s]
            )
        )
        chains = [p.lead_s for p in self._model_plans.values()]
        self.metrics.lead_time.labels(stage="chain").set(max(chains, default=0.0))

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_s`` until ``stop`` is set. On stop, the tick in flight gets
        ``shutdown_grace_s`` to finish, then is cancelled."""
        while not stop.is_set():
            tick = asyncio.ensure_future(self.tick())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({tick, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not tick.done():
                log.info("stop requested; finishing the tick", grace_s=self.config.shutdown_grace_s)
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(tick, timeout=self.config.shutdown_grace_s)
            stopper.cancel()
            if tick.done() and not tick.cancelled() and tick.exception() is not None:
                error = tick.exception()
                log.error("tick failed", error=repr(error))
                self.metrics.ticks.labels(result="error").inc()
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.tick_s)


def _model_of(action: Action) -> ModelId | None:
    """The model an action is about (pool-level actions have none)."""
    return action.model if isinstance(action, ReplicaFloor | Preload | Evict) else None


def _kind(action: Action) -> str:
    return type(action).__name__


def _stale(forecast: Forecast) -> Forecast:
    return forecast if forecast.stale else replace(forecast, stale=True)


def _with_rate(state: ModelState | None, model: ModelId, rate: float) -> ModelState:
    base = state if state is not None else ModelState(model=model)
    return replace(base, observed_rps=rate)


__all__ = [
    "ActionOutcome",
    "ClusterObserver",
    "ClusterSnapshot",
    "Daemon",
    "HistorySource",
    "NodeCapacity",
    "PlanApplier",
    "TickReport",
]
