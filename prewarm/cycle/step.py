"""One decision cycle: forecasts + the observed cluster + manual state -> a plan. Pure.

``step(inputs, state, config) -> CycleResult(plan, state, report)`` is everything between a
forecast and the actions to apply, in this order:

1. new history steps are folded into the traffic records (observed and active rates, idle
   gaps, silences) and score the earlier one-step-ahead forecasts;
2. fresh forecasts are remembered for scoring; the quality gate sends models whose live
   forecast error is too high back to reactive handling (their forecasts do not reach the
   planner);
3. stage durations observed since the last cycle update the lead-time book (lead times are
   learned from observations only; the catalog's figures stand until there are enough);
4. the planner plans from the gated forecasts, the observed state and the idle-time evidence
   over each model's planning window (``interval + lead`` of the previous plan);
5. manual requests, pins and pauses in force are applied (a paused model keeps the actions it had);
6. the per-tick budget caps defer what a single tick may not start; under a global pause nothing
   is to be applied.

The daemon, the simulator behind ``prewarm bench`` and (through what the cycle publishes) the
KEDA scaler and ``prewarm explain`` all run this one function. Contract: no I/O, no clock ("now"
is ``inputs.now_s``); ``state`` is consumed (the returned state replaces it: its records are
updated in place, so the one passed in must not be used again).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from common.ids import ModelId, PoolName
from forecaster.types import Forecast, SeriesBatch
from planner.actions import Action, Preload, Tier, WarmPlan
from planner.leadtime import LeadTimeBook
from planner.planner import ModelPlan, ModelState, PlanContext, PlannerState, plan
from prewarm.cycle.budget import cap_plan
from prewarm.cycle.config import CycleConfig
from prewarm.cycle.interfaces import ClusterSnapshot
from prewarm.cycle.manual import ActiveOverrides, ControlState, active_overrides
from prewarm.cycle.manual_actions import with_overrides
from prewarm.cycle.quality import LiveAccuracy, Quality, gate_failure, passes_gate
from prewarm.cycle.traffic import StepTraffic, TrafficRecord

DEFAULT_LEAD_S = 120.0
"""Lead time assumed for a model's idle-time window before the planner has computed one."""


@dataclass(frozen=True, slots=True)
class CycleInputs:
    """What one cycle reads.

    - ``forecasts``: the latest forecast per model (stale ones marked);
    - ``fresh``: the forecasts were made from a history source that answered this cycle;
    - ``history``: the complete steps observed since the previous cycle (None: none);
    - ``control``: the stored manual state, or None when the store could not be read (the last
      one read stays in force).
    """

    now_s: float
    forecasts: Mapping[ModelId, Forecast]
    snapshot: ClusterSnapshot
    history: SeriesBatch | None = None
    fresh: bool = True
    control: ControlState | None = None


@dataclass(slots=True)
class CycleState:
    """What one cycle carries to the next (see the module docstring on ownership)."""

    planner: PlannerState
    accuracy: LiveAccuracy
    traffic: TrafficRecord = field(default_factory=TrafficRecord)
    control: ControlState = field(default_factory=ControlState)
    model_plans: Mapping[ModelId, ModelPlan] = field(default_factory=dict)
    frozen: Mapping[ModelId, tuple[Action, ...]] = field(default_factory=dict)
    gated: frozenset[ModelId] = frozenset()
    gpu_preloaded: frozenset[ModelId] = frozenset()
    """Models whose GPU preload the previous cycle let through (a repeat adds nothing)."""
    pools_seen: frozenset[PoolName] = frozenset()

    @classmethod
    def initial(cls, config: CycleConfig) -> CycleState:
        """The state before the first cycle."""
        planner = config.planner
        return cls(
            planner=PlannerState(
                lead=LeadTimeBook(
                    quantile=planner.lead_quantile, min_samples=planner.lead_min_samples
                )
            ),
            accuracy=LiveAccuracy(window_steps=config.quality_gate.window_steps),
        )


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one cycle decided and why: what the daemon publishes (metrics, the control API, the
    KEDA scaler) and what the simulator measures.

    - ``plan``: the plan with manual overrides (what ``prewarm plan`` and ``explain`` show);
    - ``to_apply``: what to apply now (budget caps applied; empty under a global pause);
    - ``deferred``: actions a cap held back, with the cap's name;
    - ``served``: the latest observed step's requests per model, each with whether a replica was
      ready (warm) and whether it came after a silence longer than the autoscaler's cooldown.
    """

    now_s: float
    forecasts: Mapping[ModelId, Forecast]
    plan: WarmPlan
    to_apply: WarmPlan
    deferred: tuple[tuple[Action, str], ...]
    model_plans: Mapping[ModelId, ModelPlan]
    gated: frozenset[ModelId]
    newly_gated: frozenset[ModelId]
    quality: Mapping[ModelId, Quality]
    overrides: ActiveOverrides
    observed_rps: Mapping[ModelId, float]
    served: tuple[Served, ...]
    gpu_bytes_planned: int
    lead: LeadTimeBook
    pools_seen: frozenset[PoolName]
    fallback_reasons: Mapping[ModelId, str] = field(default_factory=dict)
    """For each model in ``newly_gated``: which of the quality gate's limits it broke."""


@dataclass(frozen=True, slots=True)
class Served:
    """A model's requests in the latest observed step, as the cluster met them."""

    model: ModelId
    requests: float
    warm: bool
    cold_start_avoided: bool


@dataclass(frozen=True, slots=True)
class CycleResult:
    """The plan to apply, the state for the next cycle and the report."""

    plan: WarmPlan
    state: CycleState
    report: CycleReport


def step(inputs: CycleInputs, state: CycleState, config: CycleConfig) -> CycleResult:
    """One decision cycle (see the module docstring)."""
    now_s = inputs.now_s
    if inputs.history is not None and inputs.history.steps > 0:
        state.traffic.observe(inputs.history)
        _score(state.accuracy, inputs.history)
    if inputs.fresh:
        state.accuracy.retain(inputs.forecasts)
        _remember(state.accuracy, inputs.forecasts, config.planning_quantile)
    quality = {m: state.accuracy.quality(m) for m in inputs.forecasts}
    gate = config.quality_gate
    gated = frozenset(
        m
        for m, q in quality.items()
        if not passes_gate(
            q,
            min_steps=gate.min_steps,
            max_error_ratio=gate.max_error_ratio,
            max_under_forecast_ratio=gate.max_under_forecast_ratio,
        )
    )
    models = sorted(set(inputs.forecasts) | set(config.catalog.specs))
    snapshot = inputs.snapshot
    planner_state = replace(
        state.planner, lead=state.planner.lead.observe(snapshot.stage_observations)
    )
    result = plan(
        PlanContext(
            now_s=now_s,
            interval_s=config.interval_s,
            forecasts={m: f for m, f in inputs.forecasts.items() if m not in gated},
            models=_model_states(models, snapshot, state, config, now_s=now_s),
            catalog=config.catalog,
            config=config.planner,
            pools=snapshot.pools,
            nodes=snapshot.nodes,
        ),
        planner_state,
    )
    control = inputs.control if inputs.control is not None else state.control
    model_plans = result.models

    def lead_s(model: ModelId) -> float:
        # A request counts from its start minus the model's lead time, plus one interval: the
        # next cycle may come up to an interval later, and the replicas must be ready at the start.
        planned = model_plans.get(model)
        return (planned.lead_s if planned is not None else 0.0) + config.interval_s

    overrides = active_overrides(control, now_s, lead_time_s=lead_s)
    manual = with_overrides(
        result.plan,
        overrides,
        catalog=config.catalog,
        known_models=models,
        frozen=state.frozen,
        nodes=snapshot.nodes,
    )
    capped = cap_plan(
        manual.plan,
        config.budget,
        current_placeholder_gpus=snapshot.placeholder_gpus,
        gpu_preloaded=state.gpu_preloaded,
    )
    to_apply = WarmPlan(now_s=now_s, actions=()) if overrides.global_pause else capped.plan
    served = tuple(_served(state.traffic.take_latest(), snapshot, config))
    pools_seen = state.pools_seen | frozenset(snapshot.pools)
    new_state = CycleState(
        planner=result.state,
        accuracy=state.accuracy,
        traffic=state.traffic,
        control=control,
        model_plans=model_plans,
        frozen=manual.frozen,
        gated=gated,
        gpu_preloaded=frozenset(
            a.model for a in to_apply.actions if isinstance(a, Preload) and a.tier is Tier.GPU
        ),
        pools_seen=pools_seen,
    )
    report = CycleReport(
        now_s=now_s,
        forecasts=inputs.forecasts,
        plan=manual.plan,
        to_apply=to_apply,
        deferred=capped.deferred,
        model_plans=model_plans,
        gated=gated,
        newly_gated=gated - state.gated,
        fallback_reasons={
            m: gate_failure(
                quality[m],
                max_error_ratio=gate.max_error_ratio,
                max_under_forecast_ratio=gate.max_under_forecast_ratio,
                planning_quantile=config.planning_quantile,
            )
            for m in gated - state.gated
        },
        quality=quality,
        overrides=overrides,
        observed_rps=state.traffic.rates(),
        served=served,
        gpu_bytes_planned=result.gpu_bytes,
        lead=result.state.lead,
        pools_seen=pools_seen,
    )
    return CycleResult(plan=to_apply, state=new_state, report=report)


def _model_states(
    models: list[ModelId],
    snapshot: ClusterSnapshot,
    state: CycleState,
    config: CycleConfig,
    *,
    now_s: float,
) -> dict[ModelId, ModelState]:
    """The observed state of every model, with its traffic records over its planning window."""
    windows = (
        config.interval_s
        + (known.lead_s if (known := state.model_plans.get(m)) is not None else DEFAULT_LEAD_S)
        for m in models
    )
    traffic = state.traffic.state_of(models, windows, now_s=now_s)
    last_request = traffic.last_request_s.tolist()
    observed = traffic.observed_rps.tolist()
    active = traffic.active_rps.tolist()
    p_observed = traffic.p_observed.tolist()
    gaps = traffic.idle_gaps.tolist()
    states: dict[ModelId, ModelState] = {}
    for i, model in enumerate(models):
        base = snapshot.models.get(model)
        last = last_request[i] if math.isfinite(last_request[i]) else None
        if base is None:  # not observed in the cluster: the defaults, built directly (cheaper)
            states[model] = ModelState(
                model=model,
                observed_rps=observed[i],
                active_rps=active[i],
                p_observed=p_observed[i],
                last_request_s=last,
                idle_gaps=gaps[i],
            )
            continue
        states[model] = replace(
            base,
            observed_rps=observed[i],
            active_rps=active[i],
            p_observed=p_observed[i],
            last_request_s=last,
            idle_gaps=gaps[i],
        )
    return states


def _score(accuracy: LiveAccuracy, batch: SeriesBatch) -> None:
    """Score the one-step-ahead forecasts made for the steps of ``batch``."""
    for column in range(batch.steps):
        step_start = batch.start_s + column * batch.step_s
        if not accuracy.has_pending(step_start):
            continue
        counts = batch.counts[:, column]
        for row in np.flatnonzero(~np.isnan(counts)).tolist():
            accuracy.record_actual(
                batch.models[row], step_start_s=step_start, actual=float(counts[row])
            )


def _remember(
    accuracy: LiveAccuracy, forecasts: Mapping[ModelId, Forecast], planning_quantile: float
) -> None:
    """Remember each fresh forecast's first step, to score when that step is observed."""
    for model, forecast in forecasts.items():
        if forecast.horizon == 0 or forecast.stale:
            continue
        accuracy.record_forecast(
            model,
            step_start_s=forecast.start_s,
            mean=float(forecast.mean[0]),
            planning_quantile=float(forecast.quantile(planning_quantile)[0]),
        )


def _served(
    latest: tuple[StepTraffic, ...], snapshot: ClusterSnapshot, config: CycleConfig
) -> list[Served]:
    """The latest step's requests, warm when the model has a ready replica now."""
    served = []
    for traffic in latest:
        observed = snapshot.models.get(traffic.model)
        warm = observed is not None and observed.ready_replicas > 0
        served.append(
            Served(
                model=traffic.model,
                requests=traffic.requests,
                warm=warm,
                # Silent for longer than the autoscaler's cooldown: it would have scaled to zero.
                cold_start_avoided=warm and traffic.silence_before_s > config.autoscaler_cooldown_s,
            )
        )
    return served
