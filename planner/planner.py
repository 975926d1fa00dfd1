"""The warm planner: forecasts + observed state + catalog -> a :class:`WarmPlan`. Pure.

For every model it works out:

- **lead time**: seconds to bring a replica up from where its weights are now (learned stage
  durations, :mod:`planner.leadtime`), including a node when its pool has no free GPU;
- **P(request within the planning window)** ``[now, now + interval + lead]``: the largest of the
  forecast's (from ``p_active``) and the model's idle-time record's (:mod:`planner.recency`),
  calibrated for an idle model against past outcomes in its context (which estimate P came from,
  how long the model has been idle, how many gaps its record holds: :mod:`planner.calibration`),
  and, for a model with observed traffic, a Poisson process at its observed rate;
- **replicas for load**: the forecast quantile's rate over the lead time and the observed rate,
  each over ``replica_rps x target_utilization``; the reactive floor ``max(forecast, observed)``;
- **value density** of holding one replica in GPU memory: ``P x requests a cold start would
  delay / GB``, the requests being every one that arrives while the model loads (``1 + rate x
  lead``, at the largest of the forecast quantile's rate, the observed rate and the observed rate
  while active), not only the first. The seconds a start takes set how many requests it delays;
  they are not a second factor (weighting by seconds as well would favour large models, whose
  starts are long, over the many small ones whose requests a start delays just as much; see
  benchmarks/README.md). Host memory uses ``P x seconds saved vs disk / GB``, and with room to
  spare holds everything by that order.

GPU memory is then filled in three passes under the global budget: reactive floors first (what
observed traffic needs now), then forecast replicas above the floor, then warm holds (one replica
of an idle model) by value density, held models counting ``1 + hysteresis`` higher. A hold needs
a density of at least ``min_value_density`` and of the price of idle memory over the planning
window (:mod:`planner.price`: ``idle_price`` x the fleet's requests per second per GB the reactive
autoscaler leaves idle, a wake-up of an idle model counting as many requests), one threshold for
all models. Holds are
admitted as a prefix of that order, so a model is never evicted while one of lower density is
kept. Host memory is filled the same way with what is not held in GPU. Replicas go down only when
the forecast and the observation both say lower (and, above one replica, have said so for
``scale_down_after_s``); only replicas the last plan asked for are held that way (forecast
replicas and holds worth their memory, not the reactive floor), so the reactive autoscaler's own
replicas stay its to remove. A forecast the observation contradicts (traffic below
:data:`STALE_FORECAST_RATIO` of what it expected now) sizes no replicas until they agree again.

Contract: never reads the clock ("now" is ``ctx.now_s``), does no I/O, and never plans more GPU
bytes than ``gpu_memory_budget_bytes`` or more host bytes than a pool's host capacity; every
target lies in the model's ``[min_replicas, max_replicas]`` except where the budget cuts it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.ids import ModelId, PoolName
from forecaster.types import FloatArray, Forecast
from planner.actions import (
    Action,
    EngineSleep,
    Evict,
    ImagePrepull,
    NodeCapacity,
    Preload,
    ReplicaDemand,
    ReplicaFloor,
    Tier,
    WarmPlan,
    WorkloadRef,
)
from planner.calibration import Calibration, Prediction, contexts
from planner.catalog import DEFAULT_SPEC_CACHE, GB, Catalog, ModelSpec, dns_name
from planner.config import PlannerConfig, StageDefaults
from planner.leadtime import LeadTimeBook, Stage, StartCosts
from planner.placement import NodeState as NodeState  # re-exported: part of the context
from planner.placement import Placement
from planner.price import FleetIdle

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

STALE_FORECAST_RATIO = 0.25
"""Observed traffic below this share of the forecast's expected rate now: the forecast is stale."""
PREPULL_MIN_PROBABILITY = 0.05
"""Pull a model's image ahead once a request within the node lead time is this likely."""


@dataclass(frozen=True, slots=True)
class ModelState:
    """What is observed of one model now."""

    model: ModelId
    ready_replicas: int = 0
    starting_replicas: int = 0
    tier: Tier = Tier.REMOTE
    """Fastest tier *below GPU* that holds the weights on the model's pool."""
    image_cached: bool = False
    observed_rps: float = 0.0
    """Request rate over the last observation window (0 when none)."""
    active_rps: float = 0.0
    """Mean request rate while the model is active (requests per second over the observation
    windows that had any request): how many requests one cold start would delay."""
    p_observed: float = 0.0
    """P(request within the planning window) from the model's own idle-time record
    (:class:`planner.recency.IdleTimeRecord`), computed by the caller; 0 without one."""
    last_request_s: float | None = None
    """When the model's latest request was seen (None: unknown); resolves the planner's past
    predictions for :mod:`planner.calibration`."""
    idle_gaps: int = 0
    """Idle gaps (times between requests) in the model's idle-time record: how much evidence
    ``p_observed`` rests on (part of the calibration context)."""
    asleep_replicas: int = 0
    """Ready replicas its serving engine holds asleep (:mod:`planner.engines`): they wake in
    seconds, so the model's lead time is the wake-up."""

    @property
    def current_replicas(self) -> int:
        """Ready plus starting replicas."""
        return self.ready_replicas + self.starting_replicas


@dataclass(frozen=True, slots=True)
class PoolState:
    """What is observed of one node pool now."""

    pool: PoolName
    free_gpus: int
    gpu_memory_bytes: int = 80 * GB
    host_capacity_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Everything one planning cycle reads; ``interval_s`` is the time until the next cycle."""

    now_s: float
    interval_s: float
    forecasts: Mapping[ModelId, Forecast]
    models: Mapping[ModelId, ModelState]
    catalog: Catalog
    config: PlannerConfig
    pools: Mapping[PoolName, PoolState] = field(default_factory=dict)
    nodes: tuple[NodeState, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannerState:
    """What the planner carries from one cycle to the next."""

    lead: LeadTimeBook = field(default_factory=LeadTimeBook)
    held: frozenset[ModelId] = frozenset()
    host_held: frozenset[ModelId] = frozenset()
    low_since: Mapping[ModelId, float] = field(default_factory=dict)
    """When forecast and observation first both said "fewer replicas" (kept while they do)."""
    planned: Mapping[ModelId, int] = field(default_factory=dict)
    """The last plan's replica targets. Scale-down hysteresis keeps only replicas the planner
    itself planned (at most what runs): replicas the reactive autoscaler added are its own to
    remove, and a floor pinned at them would stop it."""
    fleet: FleetIdle = field(default_factory=FleetIdle)
    """The fleet's request rate and reactive idle memory, averaged (prices warm holds)."""
    calibration: Calibration = field(default_factory=Calibration)
    """Past predictions of P for idle models against what happened."""
    idle: frozenset[ModelId] = frozenset()
    """Models without observed traffic at the last plan (traffic now wakes them: the price
    counts wake-ups, :mod:`planner.price`)."""


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """The planner's numbers for one model (what ``prewarm explain`` shows)."""

    model: ModelId
    target_replicas: int
    hold_gpu: bool
    hold_host: bool
    p_window: float
    value_density: float
    lead_s: float
    saved_s: float
    floor_replicas: int
    forecast_replicas: int
    hold_threshold: float = 0.0
    """Least value density a warm hold needed in this plan (floor or price of idle memory)."""
    placement: str = ""
    """Why the model's preloads were not placed (no observed node of its pool yet, or no room);
    empty when they were, or when none was planned."""


@dataclass(frozen=True, slots=True)
class PlanResult:
    """A plan, the state for the next cycle and the per-model numbers behind it."""

    plan: WarmPlan
    state: PlannerState
    models: Mapping[ModelId, ModelPlan]
    gpu_bytes: int
    host_bytes: int


def gpus_per_replica(weights_bytes: int, gpu_memory_bytes: int, *, headroom: float = 0.25) -> int:
    """GPUs one replica needs: weights plus KV headroom, tensor-parallel over a power of two."""
    needed = max(1, math.ceil(weights_bytes * (1.0 + headroom) / max(1, gpu_memory_bytes)))
    return 1 << (needed - 1).bit_length()


@dataclass(frozen=True, slots=True)
class _ForecastGroup:
    """Forecasts on one grid, stacked: rows of ``models`` and their per-step arrays."""

    start_s: float
    step_s: float
    horizon: int
    rows: list[int]
    p_active: FloatArray
    mean: FloatArray
    counts: FloatArray
    """Requests per step at the outlook's quantile level (the mean where it was not forecast)."""


class Outlook:
    """The forecasts of ``models`` stacked once per grid, to be read over many windows."""

    def __init__(
        self, forecasts: Mapping[ModelId, Forecast], models: list[ModelId], *, level: float
    ) -> None:
        self.size = len(models)
        grouped: dict[tuple[float, float, int, tuple[float, ...]], list[int]] = {}
        for row, model in enumerate(models):
            forecast = forecasts.get(model)
            if forecast is None or forecast.horizon == 0:
                continue
            key = (forecast.start_s, forecast.step_s, forecast.horizon, forecast.quantiles)
            grouped.setdefault(key, []).append(row)
        self.groups: list[_ForecastGroup] = []
        for (start_s, step_s, horizon, levels), rows in grouped.items():
            stacked = [forecasts[models[row]] for row in rows]
            self.groups.append(
                _ForecastGroup(
                    start_s=start_s,
                    step_s=step_s,
                    horizon=horizon,
                    rows=rows,
                    p_active=np.stack([f.p_active for f in stacked]),
                    mean=np.stack([f.mean for f in stacked]),
                    counts=np.stack(
                        [f.quantile(level) if level in levels else f.mean for f in stacked]
                    ),
                )
            )

    def over(self, now_s: float, seconds: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per model, over the window ``[now, now + seconds]`` (one length per model):

        ``(P(any request), requests/s at the quantile level averaged over the window, expected
        requests/s now)``; the last is the mean of the first step (what the observation should
        show if the forecast is right). Forecast steps that began before ``now_s`` are skipped; a
        window longer than the forecast reuses its last step. Models without a forecast get
        zeros.
        """
        p_any = np.zeros(self.size)
        rate = np.zeros(self.size)
        now_rate = np.zeros(self.size)
        for group in self.groups:
            rows, step_s = group.rows, group.step_s
            offset = max(0, int((now_s - group.start_s) // step_s))
            ends = np.maximum(offset + 1, np.ceil((now_s + seconds[rows] - group.start_s) / step_s))
            positions = np.arange(offset, int(ends.max()))
            steps = np.minimum(positions, group.horizon - 1)
            inside = positions[None, :] < ends[:, None]
            p_window = np.where(inside, group.p_active[:, steps], 0.0)
            p_any[rows] = 1.0 - np.prod(1.0 - p_window, axis=1)
            rate[rows] = np.where(inside, group.counts[:, steps], 0.0).sum(axis=1) / inside.sum(
                axis=1
            )
            rate[rows] /= step_s
            now_rate[rows] = group.mean[:, steps[0]] / step_s
        return p_any, rate, now_rate


def _replicas(rate_rps: FloatArray, replica_rps: FloatArray, utilization: float) -> IntArray:
    needed: IntArray = np.ceil(rate_rps / (replica_rps * utilization) - 1e-9).astype(np.int64)
    return np.maximum(needed, 0)


def _workload(spec: ModelSpec) -> WorkloadRef:
    if spec.workload is not None:
        return spec.workload
    return _default_workload(spec.model)


@functools.lru_cache(maxsize=DEFAULT_SPEC_CACHE)
def _default_workload(model: str) -> WorkloadRef:
    """The workload a model that nothing else maps (see :mod:`planner.catalog`) falls back to: a
    Deployment in ``default`` named :func:`planner.catalog.dns_name` of its id."""
    return WorkloadRef(namespace="default", name=dns_name(model) or "model")


@dataclass(slots=True)
class _Table:
    """The per-model arrays of one planning cycle (index = position in ``names``)."""

    names: list[ModelId]
    specs: list[ModelSpec]
    weights_gb: FloatArray
    weights_bytes: IntArray
    min_replicas: IntArray
    max_replicas: IntArray
    current: IntArray
    lead_s: FloatArray
    node_lead_s: FloatArray
    p: FloatArray
    p_raw: FloatArray
    """P before calibration (what calibration records for idle models)."""
    context: IntArray
    """Each model's calibration context (:func:`planner.calibration.contexts`)."""
    window_s: FloatArray
    observed_rps: FloatArray
    idle: BoolArray
    """Models without observed traffic now."""
    p_node: FloatArray
    floor: IntArray
    forecast: IntArray
    forecast_node: IntArray
    saved_s: FloatArray
    density: FloatArray
    host_density: FloatArray
    target: IntArray
    host: BoolArray
    image_cached: BoolArray


def _lead_times(
    ctx: PlanContext, book: LeadTimeBook, names: list[ModelId], specs: list[ModelSpec]
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(lead from the current tier, lead on a new node, start from the current tier on an existing
    node with the image cached, host-vs-disk saving) per model.

    Models alike in everything these are computed from share one computation: the same pool,
    image and sizes, the same tier and image cache, and no stage learned for the model itself
    (its compile times; a sleeping replica's wake-up is looked up per model). A fleet of
    thousands of default-sized models has a handful of such classes.
    """
    stages = ctx.config.stages
    own = {key.rpartition("|")[0] for stage, key in book.learned if stage is Stage.COMPILE}
    lead = np.zeros(len(names))
    node_lead = np.zeros(len(names))
    warm_start = np.zeros(len(names))
    host_saved = np.zeros(len(names))
    alike: dict[tuple[object, ...], tuple[float, float, float, float]] = {}
    for position, model in enumerate(names):
        spec = specs[position]
        observed = ctx.models[model]
        key = (
            spec.node_pool,
            spec.image,
            spec.image_gb,
            spec.weights_gb,
            spec.compile_s,
            observed.tier,
            observed.image_cached,
            spec.model if spec.model in own else None,
        )
        wakes = observed.asleep_replicas > 0 and spec.engine is not None
        known = None if wakes else alike.get(key)
        if known is None:
            known = _start_times(ctx, book, model, spec, observed, stages)
            if not wakes:
                alike[key] = known
        lead[position], node_lead[position], warm_start[position], host_saved[position] = known
    return lead, node_lead, warm_start, np.maximum(host_saved, 0.0)


def _start_times(
    ctx: PlanContext,
    book: LeadTimeBook,
    model: ModelId,
    spec: ModelSpec,
    observed: ModelState,
    stages: StageDefaults,
) -> tuple[float, float, float, float]:
    """One model's entries of :func:`_lead_times`."""
    pool = ctx.pools.get(spec.node_pool)
    gpu_bytes = pool.gpu_memory_bytes if pool is not None else 80 * GB
    gpr = gpus_per_replica(spec.weights_bytes, gpu_bytes)
    needs_node = pool is not None and pool.free_gpus < gpr
    costs = StartCosts.plan(book, spec, stages)
    lead = costs.start(
        tier=observed.tier, image_cached=observed.image_cached, needs_node=needs_node
    )
    if observed.asleep_replicas > 0 and spec.engine is not None:
        lead = min(lead, book.seconds(Stage.WAKE, str(model), spec.engine.wake_s))
    node_lead = costs.start(tier=Tier.REMOTE, image_cached=False, needs_node=True)
    warm_start = (
        lead
        if observed.image_cached and not needs_node
        else costs.start(tier=observed.tier, image_cached=True, needs_node=False)
    )
    return lead, node_lead, warm_start, costs.weights_s[Tier.DISK] - costs.weights_s[Tier.HOST]


def _table(ctx: PlanContext, state: PlannerState) -> _Table:
    config = ctx.config
    names = list(ctx.models)
    specs = [ctx.catalog.spec(model) for model in names]
    observed = [ctx.models[model] for model in names]
    weights_gb = np.array([spec.weights_gb for spec in specs], dtype=np.float64)
    replica_rps = np.array([spec.replica_rps for spec in specs], dtype=np.float64)
    current = np.array([o.current_replicas for o in observed], dtype=np.int64)
    observed_rps = np.array([o.observed_rps for o in observed], dtype=np.float64)
    p_observed = np.array([o.p_observed for o in observed], dtype=np.float64)
    active_rps = np.array([o.active_rps for o in observed], dtype=np.float64)
    lead, node_lead, warm_start, host_saved = _lead_times(ctx, state.lead, names, specs)
    level = config.replica_quantile
    window = ctx.interval_s + lead
    outlook = Outlook(ctx.forecasts, names, level=level)
    p, _, expected_now = outlook.over(ctx.now_s, window)
    # Replicas are sized for the forecast over the lead time, when a replica started now could
    # serve: later rises are for later plans, which start their replicas in time for them.
    _, peak, _ = outlook.over(ctx.now_s, lead)
    p_node, peak_node, _ = outlook.over(ctx.now_s, ctx.interval_s + node_lead)
    # An idle model's P is calibrated against past outcomes; observed traffic is evidence too:
    # a Poisson process at the observed rate.
    p_raw = np.maximum(p, p_observed)
    idle = observed_rps <= 0
    last_request = np.array(
        [-math.inf if o.last_request_s is None else o.last_request_s for o in observed]
    )
    context = contexts(
        p, p_observed, ctx.now_s - last_request, np.array([o.idle_gaps for o in observed])
    )
    p_idle = state.calibration.apply(p_raw, context) if config.calibrate_p else p_raw
    p = np.where(idle, p_idle, np.maximum(p_raw, 1.0 - np.exp(-observed_rps * window)))
    floor = _replicas(observed_rps, replica_rps, config.target_utilization)
    floor = np.where(observed_rps > 0, np.maximum(floor, 1), floor)
    # Seconds saved by a replica in GPU vs the next slower tier: a start from that tier.
    saved = np.where(current > 0, warm_start, lead)
    load_replicas = _replicas(peak, replica_rps, config.target_utilization)
    # A cold start delays every request that arrives while the model loads, not just the first.
    affected = 1.0 + np.maximum(np.maximum(peak, observed_rps), active_rps) * lead
    safe_gb = np.maximum(weights_gb, 1e-9)
    held = np.array([m in state.held for m in names], dtype=np.bool_) | (current > 0)
    bonus = np.where(held, 1.0 + config.hysteresis, 1.0)
    host_held = np.array([m in state.host_held for m in names], dtype=np.bool_)
    host_bonus = np.where(host_held, 1.0 + config.hysteresis, 1.0)
    return _Table(
        names=names,
        specs=specs,
        weights_gb=weights_gb,
        weights_bytes=np.array([spec.weights_bytes for spec in specs], dtype=np.int64),
        min_replicas=np.array([spec.min_replicas for spec in specs], dtype=np.int64),
        max_replicas=np.array([spec.max_replicas for spec in specs], dtype=np.int64),
        current=current,
        lead_s=lead,
        node_lead_s=node_lead,
        p=p,
        p_raw=p_raw,
        context=context,
        window_s=window,
        observed_rps=observed_rps,
        idle=idle,
        p_node=p_node,
        floor=floor,
        # The forecast sizes replicas for load; whether an idle model keeps its *first* replica
        # is the value-density decision (a small forecast rate alone does not hold memory).
        # A forecast the observation contradicts (traffic far below what it expected now, e.g. an
        # outage upstream) sizes no replicas until they agree again.
        forecast=np.where(
            (load_replicas > 1) & ~(observed_rps < STALE_FORECAST_RATIO * expected_now),
            load_replicas,
            0,
        ),
        forecast_node=_replicas(peak_node, replica_rps, config.target_utilization),
        saved_s=saved,
        density=p * affected / safe_gb * bonus,
        host_density=p * host_saved / safe_gb * host_bonus,
        target=np.zeros(len(names), np.int64),
        host=np.zeros(len(names), np.bool_),
        image_cached=np.array([o.image_cached for o in observed], dtype=np.bool_),
    )


def plan(ctx: PlanContext, state: PlannerState) -> PlanResult:
    """One planning cycle: see the module docstring for what is decided and guaranteed."""
    config = ctx.config
    t = _table(ctx, state)
    count = len(t.names)
    budget = config.gpu_memory_budget_bytes
    remaining = float("inf") if budget is None else float(budget)
    # Highest density first; ties by model id so the order is deterministic.
    density = t.density.tolist()
    order = sorted(range(count), key=lambda i: (-density[i], t.names[i]))
    target = [0] * count
    weights = t.weights_bytes.tolist()
    highs = t.max_replicas.tolist()
    floors = np.minimum(np.maximum(t.floor, t.min_replicas), t.max_replicas).tolist()
    wanted = np.minimum(np.maximum(t.floor, t.forecast), t.max_replicas).tolist()
    # Pass 1: reactive floors; pass 2: forecast replicas above them.
    for goals in (floors, wanted):
        for i in order:
            extra = goals[i] - target[i]
            if extra <= 0:
                continue
            fits = extra if budget is None else min(extra, int(remaining // weights[i]))
            if fits > 0:
                target[i] += fits
                remaining -= fits * weights[i]
    # Pass 3: warm holds for idle models, a prefix of the density order.
    fleet = _observe_fleet(ctx, state, t)
    needed = _hold_threshold(ctx, fleet, t)
    for i in order:
        if target[i] > 0 or highs[i] < 1:
            continue
        if density[i] < needed:
            continue
        if weights[i] > remaining:
            break
        target[i] = 1
        remaining -= weights[i]

    # Scale-down only where forecast and observation agree.
    low_since = dict(state.low_since)
    current = t.current.tolist()
    floor_list = t.floor.tolist()
    forecast_list = t.forecast.tolist()
    for i in range(count):
        model = t.names[i]
        base = min(current[i], state.planned.get(model, 0))
        if target[i] >= base:
            low_since.pop(model, None)
            continue
        observed_low = floor_list[i] < base
        forecast_low = forecast_list[i] < base and not (base == 1 and target[i] >= 1)
        if not (observed_low and forecast_low):
            keep = base
            low_since.pop(model, None)
        elif base > 1 and target[i] >= 1:
            since = low_since.setdefault(model, ctx.now_s)
            keep = target[i] if ctx.now_s - since >= config.scale_down_after_s else base
        else:
            keep = target[i]
        keep = min(keep, highs[i])
        if keep > target[i] and (keep - target[i]) * weights[i] <= remaining:
            remaining -= (keep - target[i]) * weights[i]
            target[i] = keep
    t.target = np.array(target, dtype=np.int64)

    # Host memory: what is not in GPU, by host value density, per pool (the pool's reported
    # capacity, else what its nodes' agents report).
    observed = Placement(ctx.nodes)

    def bytes_of(model: ModelId) -> int:
        return ctx.catalog.spec(model).weights_bytes

    host_left: dict[PoolName, float] = {
        pool: observed.host_capacity(pool, bytes_of)
        for pool in {spec.node_pool for spec in t.specs}
    }
    host_left.update(
        {
            name: float(pool.host_capacity_bytes)
            for name, pool in ctx.pools.items()
            if pool.host_capacity_bytes is not None
        }
    )
    total_host = (
        float("inf")
        if config.host_memory_budget_bytes is None
        else float(config.host_memory_budget_bytes)
    )
    host_density = t.host_density.tolist()
    # A model whose first GPU replica is still to come keeps its host copy: that is what it loads
    # from (without it the load would come from disk, later than planned).
    # So does one that no node has GPU room for: its preload goes to host memory instead.
    loading = [
        target[i] > 0
        and (
            (ctx.models[t.names[i]].ready_replicas == 0 and t.names[i] in state.host_held)
            or (
                observed.has_nodes(t.specs[i].node_pool)
                and not observed.gpu_room_for(t.names[i], t.specs[i].node_pool, weights[i])
            )
        )
        for i in range(count)
    ]
    # The walk below stops at the first model neither loading nor dense enough; every model
    # after it in this order is neither, so only the others are sorted.
    candidates = [
        i for i in range(count) if loading[i] or not host_density[i] < config.host_min_value_density
    ]
    for i in sorted(candidates, key=lambda i: (not loading[i], -host_density[i], t.names[i])):
        if host_density[i] < config.host_min_value_density and not loading[i]:
            break
        if target[i] > 0 and not loading[i]:
            continue
        pool_name = t.specs[i].node_pool
        left = host_left.get(pool_name, float("inf"))
        if weights[i] > left or weights[i] > total_host:
            break
        t.host[i] = True
        host_left[pool_name] = left - weights[i]
        total_host -= weights[i]

    actions, notes = _actions(ctx, t, order)
    held = frozenset(t.names[i] for i in range(count) if target[i] > 0)
    host_held = frozenset(t.names[i] for i in np.flatnonzero(t.host).tolist())
    explained = {
        model: ModelPlan(
            model=model,
            target_replicas=target[i],
            hold_gpu=target[i] > 0,
            hold_host=hold_host,
            p_window=p_window,
            value_density=value_density,
            lead_s=lead_s,
            saved_s=saved_s,
            floor_replicas=floor_replicas,
            forecast_replicas=forecast_replicas,
            hold_threshold=needed,
            placement=notes.get(model, ""),
        )
        for i, (
            model,
            hold_host,
            p_window,
            value_density,
            lead_s,
            saved_s,
            floor_replicas,
            forecast_replicas,
        ) in enumerate(
            zip(
                t.names,
                t.host.tolist(),
                t.p.tolist(),
                density,
                t.lead_s.tolist(),
                t.saved_s.tolist(),
                floor_list,
                forecast_list,
                strict=True,
            )
        )
    }
    new_state = PlannerState(
        lead=state.lead,
        held=held,
        host_held=host_held,
        low_since=low_since,
        # The planner's own replicas: forecast ones and the warm hold, not the reactive floor's.
        planned={
            t.names[i]: own
            for i in range(count)
            if (own := _own_replicas(target[i], forecast_list[i], density[i] >= needed)) > 0
        },
        fleet=fleet,
        calibration=_calibrate(ctx, state, t) if config.calibrate_p else state.calibration,
        idle=frozenset(t.names[i] for i in np.flatnonzero(t.idle).tolist()),
    )
    return PlanResult(
        plan=WarmPlan(now_s=ctx.now_s, actions=tuple(actions)),
        state=new_state,
        models=explained,
        gpu_bytes=int((t.target * t.weights_bytes).sum()),
        host_bytes=int(t.weights_bytes[t.host].sum()),
    )


def _own_replicas(target: int, forecast: int, worth_holding: bool) -> int:
    """The planner's own share of ``target``: forecast replicas and a warm hold worth its
    memory. Replicas there only because observed traffic needs them now (the reactive floor) are
    the autoscaler's, which removes them when the traffic goes."""
    return min(target, max(forecast, 1 if worth_holding else 0))


def _calibrate(ctx: PlanContext, state: PlannerState, t: _Table) -> Calibration:
    """Resolve past predictions and record this plan's raw P for idle models."""
    last = {
        model: observed.last_request_s
        for model, observed in ctx.models.items()
        if observed.last_request_s is not None
    }
    raw = t.p_raw.tolist()
    window = t.window_s.tolist()
    context = t.context.tolist()
    predictions = {
        t.names[i]: Prediction(raw[i], window[i], context[i])
        for i in np.flatnonzero(t.idle).tolist()
    }
    return state.calibration.update(ctx.now_s, last, predictions)


def _observe_fleet(ctx: PlanContext, state: PlannerState, t: _Table) -> FleetIdle:
    """Fold the fleet's request rate, the reactive autoscaler's idle memory (the GB of replicas
    the last plan did not ask for, of models without traffic now) and the models woken since the
    last plan into the averages."""
    own = np.array([state.planned.get(m, 0) for m in t.names], dtype=np.int64)
    reactive = np.maximum(t.current - own, 0)
    idle_gb = float((reactive * t.weights_gb)[t.idle].sum())
    woken = sum(1 for i in np.flatnonzero(~t.idle).tolist() if t.names[i] in state.idle)
    return state.fleet.observe(ctx.now_s, float(t.observed_rps.sum()), idle_gb, woken)


def _hold_threshold(ctx: PlanContext, fleet: FleetIdle, t: _Table) -> float:
    """Least value density for a warm hold: the configured floor, or the price of idle memory
    (:mod:`planner.price`) over the planning window (the interval plus the median lead time), if
    higher. One threshold for every model, so holds stay a prefix of the density order."""
    config = ctx.config
    per_gb_s = fleet.requests_per_idle_gb()
    if per_gb_s is None or config.idle_price <= 0 or not t.names:
        return config.min_value_density
    window = ctx.interval_s + float(np.median(t.lead_s))
    return max(config.min_value_density, config.idle_price * per_gb_s * window)


def _acting(t: _Table, placement: Placement) -> list[bool]:
    """Per model: whether :func:`_actions` may do anything for it.

    A model with no replica planned or running, no host copy planned, no image to pull ahead, no
    replica forecast within the node lead time, and no copy on any observed node gets no action
    and no note, and frees no room: every branch of :func:`_actions` for it is empty (its engine
    has no ready replica to sleep or wake, and there is nothing of it to evict). Skipping such
    models is exact, and most of a large idle fleet is such a model.
    """
    acting = (
        (t.target > 0)
        | (t.current > 0)
        | t.host
        | ((t.p_node >= PREPULL_MIN_PROBABILITY) & ~t.image_cached)
        | (t.forecast_node > 0)
    )
    if placement.holds_any():
        acting |= np.array([placement.holds(model) for model in t.names], dtype=np.bool_)
    out: list[bool] = acting.tolist()
    return out


def _actions(
    ctx: PlanContext, t: _Table, order: list[int]
) -> tuple[list[Action], dict[ModelId, str]]:
    """The plan's actions, and a note for each model whose preloads could not be placed."""
    now = ctx.now_s
    actions: list[Action] = []
    notes: dict[ModelId, str] = {}
    placement = Placement(ctx.nodes)
    acting = _acting(t, placement)
    order = [i for i in order if acting[i]]
    # Plain Python numbers, read per model below (numpy scalars cost more to index and convert).
    targets = t.target.tolist()
    currents = t.current.tolist()
    weights = t.weights_bytes.tolist()
    hosts = t.host.tolist()
    ps = t.p.tolist()
    leads = t.lead_s.tolist()
    saved = t.saved_s.tolist()
    densities = t.density.tolist()
    host_densities = t.host_density.tolist()
    floors = t.floor.tolist()
    forecasts = t.forecast.tolist()
    p_nodes = t.p_node.tolist()
    cached = t.image_cached.tolist()
    node_leads = t.node_lead_s.tolist()
    forecast_nodes = t.forecast_node.tolist()
    # What this plan evicts frees room for what it preloads.
    for i in order:
        model, pool_name, nbytes = t.names[i], t.specs[i].node_pool, weights[i]
        if targets[i] == 0:
            for node in placement.holders(model, pool_name, Tier.GPU):
                placement.release(node, Tier.GPU, nbytes)
        falls_back = (
            targets[i] > 0
            and placement.has_nodes(pool_name)
            and not placement.gpu_room_for(model, pool_name, nbytes)
        )
        if not hosts[i] and not falls_back:
            for node in placement.holders(model, pool_name, Tier.HOST):
                placement.release(node, Tier.HOST, nbytes)
    extra_gpus: dict[PoolName, int] = {}
    demands: dict[PoolName, list[ReplicaDemand]] = {}
    for i in order:
        model = t.names[i]
        spec = t.specs[i]
        current = currents[i]
        target = targets[i]
        p = ps[i]
        lead = leads[i]
        value = p * saved[i]
        density = densities[i]
        if target > 0 or current > 0:
            actions.append(
                ReplicaFloor(
                    model=model,
                    workload=_workload(spec),
                    min_replicas=target,
                    until_s=now + ctx.interval_s + lead,
                    reason=(
                        f"P(request in {ctx.interval_s + lead:.0f}s)={p:.2f}, floor "
                        f"{floors[i]}, forecast {forecasts[i]}, lead {lead:.0f}s"
                    ),
                    value=value,
                    value_per_byte=density / GB,
                )
            )
        sleeps = _engine_sleep(ctx, t, i) if current > 0 else None
        if sleeps is not None:
            actions.append(sleeps)
        # A replica kept asleep holds its own weights (in CPU memory at vLLM's level 1): a GPU
        # copy by the agent would take the memory its sleep frees.
        hold_only = target > 0 and forecasts[i] == 0 and floors[i] == 0 and p < SLEEP_BELOW_P
        kept_asleep = (sleeps is not None and sleeps.asleep) or (
            hold_only and ctx.models[model].asleep_replicas > 0
        )
        pool_name = spec.node_pool
        if (target > 0 or hosts[i]) and not placement.has_nodes(pool_name):
            notes[model] = f"waiting for a node of pool {pool_name} to preload into"
        tier = Tier.GPU
        if target > 0 and not kept_asleep:
            nodes = placement.gpu(model, pool_name, spec.weights_bytes, target)
            if not nodes and placement.has_nodes(pool_name):
                # No GPU room on any node (or no GPU at all): the next best copy is in host
                # memory, a host-to-GPU copy away from the replica.
                tier = Tier.HOST
                host_copy = placement.host(model, pool_name, spec.weights_bytes)
                nodes = [host_copy] if host_copy is not None else []
                notes[model] = (
                    f"no node of pool {pool_name} has GPU room: preloaded into host memory"
                    if nodes
                    else f"no node of pool {pool_name} has GPU or host room for a preload"
                )
            actions.extend(
                Preload(
                    model=model,
                    node=node,
                    tier=tier,
                    bytes=spec.weights_bytes,
                    deadline_s=now + lead,
                    value_per_byte=density / GB,
                    reason=f"value density {density:.3g} s/GB saves {saved[i]:.0f}s",
                    value=value,
                )
                for node in nodes
            )
        else:
            actions.extend(
                Evict(
                    model=model,
                    node=node,
                    tier=Tier.GPU,
                    reason=f"value density {density:.3g} s/GB is below what is kept",
                    value=value,
                )
                for node in placement.holders(model, pool_name, Tier.GPU)
            )
        # A replica's weights preloaded into host memory for lack of GPU room are the host copy.
        host_copy_planned = target > 0 and tier is Tier.HOST
        host_node = (
            placement.host(model, pool_name, spec.weights_bytes)
            if hosts[i] and not host_copy_planned
            else None
        )
        if host_node is not None:
            host_density = host_densities[i]
            actions.append(
                Preload(
                    model=model,
                    node=host_node,
                    tier=Tier.HOST,
                    bytes=spec.weights_bytes,
                    deadline_s=now + ctx.interval_s,
                    value_per_byte=host_density / GB,
                    reason=f"host value density {host_density:.3g} s/GB",
                    value=value,
                )
            )
        elif not hosts[i] and not host_copy_planned:
            actions.extend(
                Evict(
                    model=model,
                    node=node,
                    tier=Tier.HOST,
                    reason="host value density fell below what is kept",
                    value=0.0,
                )
                for node in placement.holders(model, pool_name, Tier.HOST)
            )
        p_node = p_nodes[i]
        if p_node >= PREPULL_MIN_PROBABILITY and not cached[i]:
            node_lead = node_leads[i]
            actions.append(
                ImagePrepull(
                    pool=spec.node_pool,
                    image=spec.image,
                    deadline_s=now + node_lead,
                    reason=f"P(request within node lead {node_lead:.0f}s)={p_node:.2f}",
                    value=p_node * spec.image_gb,
                    workload=_workload(spec),
                )
            )
        ahead = max(forecast_nodes[i], target) - current
        if ahead > 0:
            pool = ctx.pools.get(spec.node_pool)
            gpu_bytes = pool.gpu_memory_bytes if pool is not None else 80 * GB
            gpr = gpus_per_replica(spec.weights_bytes, gpu_bytes)
            extra_gpus[spec.node_pool] = extra_gpus.get(spec.node_pool, 0) + ahead * gpr
            demands.setdefault(spec.node_pool, []).append(
                ReplicaDemand(model, _workload(spec), ahead, gpr)
            )
    for pool_name, gpus in sorted(extra_gpus.items()):
        actions.append(
            NodeCapacity(
                pool=pool_name,
                gpus=gpus,
                reason=f"{gpus} GPUs of replicas planned or forecast within the node lead time",
                value=float(gpus),
                demands=tuple(demands.get(pool_name, ())),
            )
        )
    return actions, notes


SLEEP_BELOW_P = 0.5
"""A replica kept only as a warm hold sleeps while a request within the planning window (the
interval plus its lead time: the wake-up once asleep) is less likely than this."""


def _hold_only(t: _Table, i: int) -> bool:
    """Whether model ``i``'s replicas are planned only as a warm hold that can sleep: no observed
    traffic, no load forecast beyond one replica, and a request within the window unlikely."""
    return (
        int(t.target[i]) > 0
        and int(t.forecast[i]) == 0
        and int(t.floor[i]) == 0
        and float(t.p[i]) < SLEEP_BELOW_P
    )


def _engine_sleep(ctx: PlanContext, t: _Table, i: int) -> EngineSleep | None:
    """Sleep a sleep-capable model's replicas kept only as a warm hold; wake them when the
    forecast or traffic asks for replicas. None when nothing is to change."""
    spec = t.specs[i]
    engine = spec.engine
    observed = ctx.models[t.names[i]]
    if engine is None or not engine.sleep or observed.ready_replicas == 0:
        return None
    hold_only = _hold_only(t, i)
    if hold_only and observed.asleep_replicas < observed.ready_replicas:
        return EngineSleep(
            model=t.names[i],
            workload=_workload(spec),
            asleep=True,
            reason=f"P(request in the window)={float(t.p[i]):.2f}: kept asleep (level "
            f"{engine.level})",
            value=0.0,
        )
    if not hold_only and observed.asleep_replicas > 0:
        return EngineSleep(
            model=t.names[i],
            workload=_workload(spec),
            asleep=False,
            reason=f"wake: forecast {int(t.forecast[i])}, observed floor {int(t.floor[i])} "
            "replicas",
            value=float(t.p[i]) * float(t.saved_s[i]),
        )
    return None


def workload_for(spec: ModelSpec) -> WorkloadRef:
    """The serving workload of a model: the one its spec resolved (catalog entry, discovered,
    template: :meth:`planner.catalog.Catalog.spec`), else a Deployment named after the model in
    ``default`` (the same ref the plan's ReplicaFloor actions use)."""
    return _workload(spec)
