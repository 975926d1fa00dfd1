"""Replays a trace against one policy on a simulated cluster and measures cold starts and memory.

Time advances in ticks of ``dt_s`` (10 s to 60 s, from the trace's resolution). Each tick:

1. replicas whose start finished are promoted to ready; provisioning nodes come up;
2. the policy decides (:class:`Decision`: target replicas, eviction priority, host-tier holds,
   image pre-pulls, placeholder node capacity) from an :class:`Observation` of the past only;
   the simulator applies it within the global GPU memory budget, admitting scale-ups by priority;
3. the tick's arrivals are served. Arrivals in a tick are spread evenly with a seeded offset. A
   request is *cold* when no replica of its model is ready at its arrival; its added wait is the
   time until the pending start completes. The first arrival at a model with nothing ready or
   starting triggers a start (the platform's activator, common to every policy) after the policy's
   activation delay; memory for it is made by evicting the lowest-priority idle models;
4. warm requests queue when the ready replicas' capacity (``replica_rps``) is exceeded (a fluid
   queue); idle GPU memory, node-hours and waits are accumulated after the warm-up period. A
   request waits for one cause: a cold request for its start, a warm one in the queue. Waits are
   kept in one histogram over all scored requests and in one per cause, so a wait p99 can be
   read as cold starts or queueing. Memory holding a model with a queue counts as busy, never
   idle: queued time is service the replicas owe.

A model with requests in the last tick or a queue keeps at least one replica (a serving replica is
not killed mid-request), whatever the policy says. Deterministic for a seed: arrival offsets and
node-provisioning delays come from seeded generators, the same arrivals for every policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.types import SeriesBatch
from prewarm.sim.cluster import (
    BoolArray,
    ClusterSpec,
    FloatArray,
    IntArray,
    ModelTable,
    warm_node_chain_s,
)

WAIT_EDGES = np.concatenate([[0.0], np.logspace(-2, 5, 281)])
"""Histogram edges of added wait in seconds (bin 0 holds waits below 10 ms, i.e. none)."""


@dataclass(frozen=True, slots=True)
class TickTrace:
    """A trace on the simulator's tick grid: ``counts[i, k]`` requests of model ``i`` in tick k."""

    models: tuple[ModelId, ...]
    start_s: float
    dt_s: float
    counts: IntArray
    source_step_s: float

    @property
    def ticks(self) -> int:
        """Number of ticks."""
        return int(self.counts.shape[1])

    @property
    def requests(self) -> int:
        """Total requests."""
        return int(self.counts.sum())


def tick_width_s(step_s: float) -> float:
    """The simulator's tick for a trace on a ``step_s`` grid: 60 s for coarse grids, else the step.

    Grids finer than 10 s are summed to a whole multiple of at least 10 s.
    """
    if step_s >= 60.0:
        parts = math.ceil(step_s / 60.0)
        return step_s / parts
    if step_s >= 10.0:
        return step_s
    return step_s * math.ceil(10.0 / step_s)


def sum_steps(counts: NDArray[Any], group: int) -> NDArray[Any]:
    """``counts`` (series x steps) with every ``group`` consecutive steps summed into one (the
    last group padded with zeros)."""
    padded = np.pad(counts, ((0, 0), (0, (-counts.shape[1]) % group)))
    summed: NDArray[Any] = padded.reshape(counts.shape[0], -1, group).sum(axis=2)
    return summed


def to_ticks(batch: SeriesBatch, *, seed: int) -> TickTrace:
    """Put ``batch`` on the tick grid: coarse buckets are split (seeded multinomial), fine summed.

    Missing values (NaN) count as zero requests. Fractional counts are rounded.
    """
    counts = np.nan_to_num(batch.counts, nan=0.0)
    whole = np.rint(counts).astype(np.int64)
    dt = tick_width_s(batch.step_s)
    if dt < batch.step_s - 1e-9:
        parts = round(batch.step_s / dt)
        rng = np.random.default_rng([seed, 0])
        split = rng.multinomial(whole, np.full(parts, 1.0 / parts))
        ticks = split.reshape(whole.shape[0], whole.shape[1] * parts)
    elif dt > batch.step_s + 1e-9:
        ticks = sum_steps(whole, round(dt / batch.step_s))
    else:
        ticks = whole
    return TickTrace(
        models=batch.models,
        start_s=batch.start_s,
        dt_s=dt,
        counts=np.ascontiguousarray(ticks, dtype=np.int64),
        source_step_s=batch.step_s,
    )


@dataclass(frozen=True, slots=True)
class SimSetup:
    """What a policy may know before the run: the cluster, the cost table and the clock."""

    table: ModelTable
    cluster: ClusterSpec
    start_s: float
    dt_s: float
    ticks: int
    budget_gb: float
    source_step_s: float


@dataclass(frozen=True, slots=True)
class StartRecord:
    """A finished start of one model, by stage (what the planner learns lead times from)."""

    model: int
    started_s: float
    ready_s: float
    node_s: float
    image_s: float
    weights_s: float
    compile_s: float
    tier: int
    new_node: bool


@dataclass(slots=True)
class Observation:
    """The policy's view at ``now_s``: the last tick's arrivals and the cluster's state."""

    now_s: float
    tick: int
    arrivals: IntArray
    ready: IntArray
    pending: IntArray
    tier: IntArray
    """Fastest tier below GPU holding each model's weights: 0 remote, 1 disk, 2 host."""
    image_cached: BoolArray
    lead_s: FloatArray
    """Seconds a start begun now would take on an existing node (no node provisioning)."""
    node_lead_s: FloatArray
    """Seconds a start begun now would take if it needs a new node (99th percentile)."""
    free_gpus: IntArray
    """Per pool: GPUs on up nodes not used by replicas."""
    nodes: IntArray
    budget_gb: float
    held_gb: float
    finished: list[StartRecord] = field(default_factory=list)


@dataclass(slots=True)
class Decision:
    """What a policy wants now. Arrays are per model unless noted.

    - ``target``: replicas wanted (clipped to the catalog's ``[min, max]``);
    - ``priority``: higher is kept longer under memory pressure and admitted first;
    - ``host``: hold the weights in host RAM (``None``: leave as is);
    - ``prepull``: have the image cached in the model's pool;
    - ``node_gpus``: per pool, placeholder GPUs to keep provisioned beyond current use.
    """

    target: IntArray
    priority: FloatArray
    host: BoolArray | None = None
    prepull: BoolArray | None = None
    node_gpus: IntArray | None = None


class Policy(Protocol):
    """A warm-keeping policy driven by the simulator."""

    name: str

    def bind(self, setup: SimSetup) -> None:
        """Reset all state for a run on ``setup``."""
        ...

    def decide(self, obs: Observation) -> Decision:
        """The decision for the tick starting at ``obs.now_s``."""
        ...

    def activation_delay_s(self, arrival_s: float) -> float:
        """Seconds between a request at a scaled-to-zero model and the start being begun."""
        ...


SUMMARY_FIELDS = (
    "cold_start_ratio",
    "cold_start_p75_per_model",
    "wait_p50_s",
    "wait_p99_s",
    "cold_wait_p99_s",
    "queue_wait_p99_s",
    "idle_gpu_gb_hours",
    "gpu_node_hours",
)
"""The per-policy fields of ``prewarm bench``'s JSON, in the order tables show them.

``cold_wait_p99_s`` and ``queue_wait_p99_s`` split ``wait_p99_s`` by cause: each is the 99th
percentile over all scored requests of the wait from that cause alone (a request that waited for
the other cause, or not at all, counts as no wait). Each is at most ``wait_p99_s``, and the larger
one is what the p99 is made of; both are 0 when neither cause alone reaches 1 % of requests.
"""


def _empty_hist() -> FloatArray:
    return np.zeros(len(WAIT_EDGES) - 1)


def hist_quantile_s(hist: FloatArray, level: float, *, total: float | None = None) -> float:
    """Quantile ``level`` of the waits in ``hist`` (bins of :data:`WAIT_EDGES`; bin midpoint, 0
    for no wait). ``total`` (default: the histogram's mass) counts requests the histogram leaves
    out as no wait."""
    mass = float(hist.sum())
    whole = mass if total is None else max(float(total), mass)
    if whole <= 0:
        return 0.0
    cumulative = np.cumsum(hist) + (whole - mass)
    index = int(np.searchsorted(cumulative, level * whole, side="left"))
    index = min(index, len(hist) - 1)
    if index == 0:
        return 0.0
    return float(math.sqrt(WAIT_EDGES[index] * WAIT_EDGES[index + 1]))


@dataclass(slots=True)
class SimResult:
    """What one run measured (after the warm-up), per model and in total."""

    policy: str
    models: tuple[ModelId, ...]
    requests: IntArray
    cold: FloatArray
    wait_hist: FloatArray
    idle_gb_s: float
    node_s: float
    overflow_gb_s: float
    scored_s: float
    held_gb_s: float
    idle_gb_s_per_model: FloatArray | None = None
    cold_wait_hist: FloatArray = field(default_factory=_empty_hist)
    """Waits for a start (cold requests only), same bins as ``wait_hist``."""
    queue_wait_hist: FloatArray = field(default_factory=_empty_hist)
    """Waits in a queue on ready replicas (warm requests that queued), same bins."""
    forecasts: tuple[tuple[int, ...], list[float], list[FloatArray]] | None = None
    """For the prewarm policy: (busiest model rows, times, one-step-ahead forecast rates)."""

    @property
    def total_requests(self) -> int:
        """Scored requests."""
        return int(self.requests.sum())

    def cold_start_ratio(self) -> float:
        """Cold requests over all scored requests."""
        total = self.requests.sum()
        return float(self.cold.sum() / total) if total else 0.0

    def cold_start_p75_per_model(self) -> float:
        """75th percentile over models (with scored requests) of each model's cold-start ratio."""
        active = self.requests > 0
        if not active.any():
            return 0.0
        ratios = self.cold[active] / self.requests[active]
        return float(np.percentile(ratios, 75))

    def wait_quantile_s(self, level: float) -> float:
        """Quantile ``level`` of added wait over scored requests (bin midpoint; 0 for no wait)."""
        return hist_quantile_s(self.wait_hist, level)

    def cold_wait_quantile_s(self, level: float) -> float:
        """Quantile ``level`` over scored requests of the wait for a start (others: none)."""
        return hist_quantile_s(self.cold_wait_hist, level, total=float(self.wait_hist.sum()))

    def queue_wait_quantile_s(self, level: float) -> float:
        """Quantile ``level`` over scored requests of the wait in a queue (others: none)."""
        return hist_quantile_s(self.queue_wait_hist, level, total=float(self.wait_hist.sum()))

    def summary(self) -> dict[str, float]:
        """The bench JSON fields of this run (keys: :data:`SUMMARY_FIELDS`, in that order)."""
        return {
            "cold_start_ratio": self.cold_start_ratio(),
            "cold_start_p75_per_model": self.cold_start_p75_per_model(),
            "wait_p50_s": self.wait_quantile_s(0.50),
            "wait_p99_s": self.wait_quantile_s(0.99),
            "cold_wait_p99_s": self.cold_wait_quantile_s(0.99),
            "queue_wait_p99_s": self.queue_wait_quantile_s(0.99),
            "idle_gpu_gb_hours": self.idle_gb_s / 3600.0,
            "gpu_node_hours": self.node_s / 3600.0,
        }


def _add_waits(hist: FloatArray, low: FloatArray, high: FloatArray, mass: FloatArray) -> None:
    """Spread ``mass`` uniformly over ``[low, high]`` (5 points each) into ``hist``."""
    if mass.size == 0:
        return
    fractions = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    points = low[:, None] + (high - low)[:, None] * fractions[None, :]
    index = np.searchsorted(WAIT_EDGES, points.ravel(), side="right") - 1
    index = np.clip(index, 0, len(hist) - 1)
    np.add.at(hist, index, np.repeat(mass / 5.0, 5))


class Simulator:
    """Runs one policy over one trace. Construct per run; :meth:`run` returns a :class:`SimResult`.

    ``budget_gb`` caps the GPU memory (weights) held by replicas, cluster-wide. ``warmup_ticks``
    are simulated but not scored (every policy starts empty and may learn from them).
    """

    def __init__(
        self,
        trace: TickTrace,
        table: ModelTable,
        cluster: ClusterSpec,
        *,
        budget_gb: float,
        warmup_ticks: int,
        seed: int,
    ) -> None:
        if budget_gb <= 0:
            raise InvalidInput(f"GPU memory budget must be > 0 GB, got {budget_gb}")
        if trace.models != table.models:
            raise InvalidInput("trace and model table must list the same models in order")
        self.trace = trace
        self.table = table
        self.cluster = cluster
        self.budget_gb = budget_gb
        self.warmup_ticks = max(0, min(warmup_ticks, trace.ticks - 1))
        self.seed = seed

    def setup(self) -> SimSetup:
        """What the policy is bound to."""
        return SimSetup(
            table=self.table,
            cluster=self.cluster,
            start_s=self.trace.start_s,
            dt_s=self.trace.dt_s,
            ticks=self.trace.ticks,
            budget_gb=self.budget_gb,
            source_step_s=self.trace.source_step_s,
        )

    def run(self, policy: Policy, *, progress: Callable[[int], None] | None = None) -> SimResult:
        """Replay the whole trace against ``policy``."""
        return _Run(self, policy, progress).execute()


class _Run:
    """The mutable state of one simulation run (arrays over models and pools)."""

    def __init__(
        self, sim: Simulator, policy: Policy, progress: Callable[[int], None] | None
    ) -> None:
        self.sim = sim
        self.policy = policy
        self.progress = progress
        table = sim.table
        m = table.size
        pools = len(sim.cluster.pools)
        self.m = m
        self.ready = np.zeros(m, np.int64)
        self.pend_n = np.zeros(m, np.int64)
        self.pend_at = np.full(m, np.inf)
        self.pend_info: dict[int, StartRecord] = {}
        self.disk = np.zeros(m, np.bool_)
        self.host = np.zeros(m, np.bool_)
        self.image_cached = np.zeros(max(1, table.image_keys), np.bool_)
        self.backlog = np.zeros(m)
        self.recent = np.zeros(m, np.int64)
        self.priority = np.zeros(m)
        self.nodes_up = np.array([p.min_nodes for p in sim.cluster.pools], np.int64)
        self.provisioning: list[list[float]] = [[] for _ in range(pools)]
        self.unneeded_since = np.full(pools, np.inf)
        self.placeholder = np.zeros(pools, np.int64)
        self.gpn = np.array([p.gpus_per_node for p in sim.cluster.pools], np.int64)
        self.finished: list[StartRecord] = []
        self.node_rng = np.random.default_rng([sim.seed, 2])
        self.arrival_rng = np.random.default_rng([sim.seed, 1])
        self.held_gb = 0.0
        self.overflow = 0.0
        self.node_lead_s = warm_node_chain_s(
            table,
            sim.cluster,
            tier=np.zeros(m, np.int64),
            image_cached=np.zeros(m, np.bool_),
        ) + table.pool_params["provision_median_s"] * np.exp(
            2.3263 * table.pool_params["provision_sigma"]
        )

    # -- capacity -------------------------------------------------------------------------------

    def used_gpus(self) -> IntArray:
        table = self.sim.table
        per_model = (self.ready + self.pend_n) * table.gpus_per_replica
        used: IntArray = np.bincount(
            table.pool, weights=per_model, minlength=len(self.sim.cluster.pools)
        ).astype(np.int64)
        return used

    def held(self) -> float:
        return float(((self.ready + self.pend_n) * self.sim.table.weights_gb).sum())

    def tier(self) -> IntArray:
        tiers: IntArray = np.where(self.host, 2, np.where(self.disk, 1, 0)).astype(np.int64)
        return tiers

    # -- starts ---------------------------------------------------------------------------------

    def start(self, i: int, count: int, at_s: float, used: IntArray) -> None:
        """Begin ``count`` replicas of model ``i`` at ``at_s``; updates ``used`` (GPUs per pool)."""
        table = self.sim.table
        pool = int(table.pool[i])
        spec = self.sim.cluster.pools[pool]
        gpus = count * int(table.gpus_per_replica[i])
        capacity_up = int(self.nodes_up[pool]) * spec.gpus_per_node
        node_s = 0.0
        new_node = False
        if used[pool] + gpus > capacity_up:
            # Not enough free GPUs on up nodes: wait for a provisioning node, or add nodes.
            capacity_all = capacity_up + len(self.provisioning[pool]) * spec.gpus_per_node
            if used[pool] + gpus <= capacity_all and self.provisioning[pool]:
                node_s = max(0.0, max(self.provisioning[pool]) - at_s)
            else:
                deficit = used[pool] + gpus - capacity_all
                add = math.ceil(deficit / spec.gpus_per_node)
                total_nodes = int(self.nodes_up[pool]) + len(self.provisioning[pool])
                add = max(0, min(add, spec.max_nodes - total_nodes))
                delay = float(
                    spec.provision_median_s
                    * math.exp(spec.provision_sigma * self.node_rng.standard_normal())
                )
                for _ in range(add):
                    self.provisioning[pool].append(at_s + delay)
                node_s = delay
            new_node = True
        used[pool] += gpus
        key = int(table.image_key[i])
        image_cached = bool(self.image_cached[key]) and not new_node
        tier = 0 if new_node else (2 if self.host[i] else (1 if self.disk[i] else 0))
        image_s = 0.0 if image_cached else float(table.image_gb[i]) / spec.image_pull_gbps
        weights = float(table.weights_gb[i])
        if tier == 2:
            weights_s = weights / spec.host_to_gpu_gbps
        elif tier == 1:
            weights_s = weights / spec.disk_gbps + weights / spec.host_to_gpu_gbps
        else:
            weights_s = weights / spec.remote_gbps + weights / spec.host_to_gpu_gbps
        compile_s = float(table.compile_s[i]) * (spec.compile_cached_fraction if tier >= 1 else 1.0)
        ready_s = at_s + node_s + image_s + spec.container_start_s + weights_s + compile_s
        self.image_cached[key] = True
        self.disk[i] = True
        if self.pend_n[i] == 0:
            self.pend_at[i] = ready_s
            self.pend_info[i] = StartRecord(
                model=i,
                started_s=at_s,
                ready_s=ready_s,
                node_s=node_s,
                image_s=image_s,
                weights_s=weights_s,
                compile_s=compile_s,
                tier=tier,
                new_node=new_node,
            )
        else:
            # Merged with a start already under way: the first replica still comes up then
            # (pending replicas are tracked as one batch, ready with its first member).
            self.pend_at[i] = min(self.pend_at[i], ready_s)
        self.pend_n[i] += count
        self.held_gb += count * weights

    def stop(self, i: int, count: int) -> None:
        """Remove ``count`` replicas of model ``i``: pending ones first, then ready ones."""
        weights = float(self.sim.table.weights_gb[i])
        cancel = min(count, int(self.pend_n[i]))
        if cancel:
            self.pend_n[i] -= cancel
            if self.pend_n[i] == 0:
                self.pend_at[i] = np.inf
                self.pend_info.pop(i, None)
        kill = min(count - cancel, int(self.ready[i]))
        self.ready[i] -= kill
        self.held_gb -= (cancel + kill) * weights

    def make_room(self, need_gb: float, *, protect: BoolArray, above: float) -> bool:
        """Evict idle models with priority below ``above`` (lowest first) until ``need_gb`` fits."""
        budget = self.sim.budget_gb
        if self.held_gb + need_gb <= budget + 1e-9:
            return True
        holders = np.flatnonzero(((self.ready + self.pend_n) > 0) & ~protect)
        if holders.size == 0:
            return False
        order = holders[np.argsort(self.priority[holders], kind="stable")]
        for j in order:
            if self.priority[j] >= above:
                break
            self.stop(int(j), int(self.ready[j] + self.pend_n[j]))
            if self.held_gb + need_gb <= budget + 1e-9:
                return True
        return self.held_gb + need_gb <= budget + 1e-9

    # -- the loop -------------------------------------------------------------------------------

    def observation(self, now_s: float, tick: int, arrivals: IntArray) -> Observation:
        table = self.sim.table
        cluster = self.sim.cluster
        keys = table.image_key
        image_cached = self.image_cached[keys]
        tier = self.tier()
        lead = warm_node_chain_s(table, cluster, tier=tier, image_cached=image_cached)
        free = self.nodes_up * self.gpn - self.used_gpus()
        finished, self.finished = self.finished, []
        return Observation(
            now_s=now_s,
            tick=tick,
            arrivals=arrivals,
            ready=self.ready.copy(),
            pending=self.pend_n.copy(),
            tier=tier,
            image_cached=image_cached,
            lead_s=lead,
            node_lead_s=self.node_lead_s,
            free_gpus=free,
            nodes=self.nodes_up.copy(),
            budget_gb=self.sim.budget_gb,
            held_gb=self.held_gb,
            finished=finished,
        )

    def apply(self, decision: Decision, now_s: float) -> None:
        table = self.sim.table
        target = np.clip(decision.target.astype(np.int64), table.min_replicas, table.max_replicas)
        # A serving replica is not killed mid-request.
        busy = (self.recent > 0) | (self.backlog > 0)
        target = np.where(busy, np.maximum(target, 1), target)
        self.priority = decision.priority.astype(np.float64)
        current = self.ready + self.pend_n
        for i in np.flatnonzero(current > target):
            self.stop(int(i), int(current[i] - target[i]))
        if decision.host is not None:
            self.host = decision.host.astype(np.bool_).copy()
            self.disk |= self.host
        if decision.prepull is not None:
            self.image_cached[table.image_key[decision.prepull.astype(np.bool_)]] = True
        if decision.node_gpus is not None:
            self.placeholder = decision.node_gpus.astype(np.int64)
        grow = np.flatnonzero(target > self.ready + self.pend_n)
        if grow.size:
            used = self.used_gpus()
            order = grow[np.argsort(-self.priority[grow], kind="stable")]
            budget = self.sim.budget_gb
            for i in order:
                want = int(target[i] - self.ready[i] - self.pend_n[i])
                room = budget - self.held_gb
                fits = min(want, math.floor(room / float(table.weights_gb[i]) + 1e-9))
                if fits > 0:
                    self.start(int(i), fits, now_s, used)
        self.scale_nodes(now_s)

    def scale_nodes(self, now_s: float) -> None:
        used = self.used_gpus()
        for pool, spec in enumerate(self.sim.cluster.pools):
            wanted = used[pool] + self.placeholder[pool]
            needed = max(spec.min_nodes, math.ceil(wanted / spec.gpus_per_node))
            needed = min(needed, spec.max_nodes)
            total = int(self.nodes_up[pool]) + len(self.provisioning[pool])
            if needed > total:
                delay = float(
                    spec.provision_median_s
                    * math.exp(spec.provision_sigma * self.node_rng.standard_normal())
                )
                self.provisioning[pool].extend([now_s + delay] * (needed - total))
            if needed < self.nodes_up[pool]:
                if not math.isfinite(self.unneeded_since[pool]):
                    self.unneeded_since[pool] = now_s
                elif now_s - self.unneeded_since[pool] >= spec.scale_down_unneeded_s:
                    self.nodes_up[pool] = needed
                    self.unneeded_since[pool] = np.inf
            else:
                self.unneeded_since[pool] = np.inf

    def execute(self) -> SimResult:
        sim = self.sim
        trace = sim.trace
        table = sim.table
        policy = self.policy
        dt = trace.dt_s
        m = self.m
        policy.bind(sim.setup())
        requests = np.zeros(m, np.int64)
        cold_total = np.zeros(m)
        hist = _empty_hist()
        cold_hist = _empty_hist()
        queue_hist = _empty_hist()
        idle_gb_s = 0.0
        idle_per_model = np.zeros(m)
        held_gb_s = 0.0
        node_s = 0.0
        overflow_gb_s = 0.0
        arrivals_prev = np.zeros(m, np.int64)
        weights = table.weights_gb
        rps = table.replica_rps
        service = table.service_s
        counts_all = trace.counts
        for k in range(trace.ticks):
            t0 = trace.start_s + k * dt
            # 1. finished starts and nodes.
            done = np.flatnonzero((self.pend_n > 0) & (self.pend_at <= t0))
            for i in done:
                self.ready[i] += self.pend_n[i]
                self.pend_n[i] = 0
                self.pend_at[i] = np.inf
                record = self.pend_info.pop(int(i), None)
                if record is not None:
                    self.finished.append(record)
            for pool, times in enumerate(self.provisioning):
                if times:
                    up = [t for t in times if t <= t0]
                    if up:
                        self.nodes_up[pool] += len(up)
                        self.provisioning[pool] = [t for t in times if t > t0]
            # 2. the policy decides.
            self.recent = arrivals_prev
            decision = policy.decide(self.observation(t0, k, arrivals_prev))
            self.apply(decision, t0)
            # 3. arrivals.
            n = counts_all[:, k]
            offset = self.arrival_rng.random(m)
            active = np.flatnonzero(n > 0)
            scored = k >= sim.warmup_ticks
            if active.size:
                na = n[active].astype(np.float64)
                first = t0 + offset[active] * dt / na
                cold_idle = active[(self.ready[active] == 0) & (self.pend_n[active] == 0)]
                if cold_idle.size:
                    used = self.used_gpus()
                    protect = np.zeros(m, np.bool_)
                    protect[active] = True
                    firsts = t0 + offset[cold_idle] * dt / n[cold_idle]
                    order = np.argsort(firsts, kind="stable")
                    for i, t_first in zip(cold_idle[order], firsts[order], strict=True):
                        need = float(weights[i])
                        held_before = self.held_gb
                        if not self.make_room(need, protect=protect, above=np.inf):
                            self.overflow += need
                        if self.held_gb < held_before:
                            used = self.used_gpus()
                        begin = float(t_first + policy.activation_delay_s(float(t_first)))
                        self.start(int(i), 1, begin, used)
                waiting = (self.ready[active] == 0) & (self.pend_n[active] > 0)
                ready_at = self.pend_at[active]
                cold_n = np.where(
                    waiting,
                    np.clip(np.ceil((ready_at - t0) * na / dt - offset[active]), 0, na),
                    0.0,
                )
                warm_n = na - cold_n
                # Queueing on ready replicas (a fluid queue); replicas finishing mid-tick count
                # for the part of the tick after they are ready.
                frac = np.clip((t0 + dt - ready_at) / dt, 0.0, 1.0)
                serving = self.ready[active] + self.pend_n[active] * frac
                capacity = serving * rps[active] * dt
                before = self.backlog[active]
                after = np.maximum(0.0, before + warm_n - capacity)
                after = np.where(serving > 0, after, 0.0)
                self.backlog[active] = after
                if scored:
                    requests[active] += n[active]
                    cold_total[active] += cold_n
                    has_cold = cold_n > 0
                    if has_cold.any():
                        idx = np.flatnonzero(has_cold)
                        step = dt / na[idx]
                        high = ready_at[idx] - first[idx]
                        low = np.maximum(
                            0.0, ready_at[idx] - (first[idx] + (cold_n[idx] - 1) * step)
                        )
                        _add_waits(hist, low, high, cold_n[idx])
                        _add_waits(cold_hist, low, high, cold_n[idx])
                    queue_wait = np.where(
                        serving > 0,
                        (before + after) / 2.0 / np.maximum(serving * rps[active], 1e-9),
                        0.0,
                    )
                    queued = (queue_wait > 0.01) & (warm_n > 0)
                    if queued.any():
                        q = np.flatnonzero(queued)
                        _add_waits(hist, queue_wait[q] * 0.5, queue_wait[q] * 1.5, warm_n[q])
                        _add_waits(queue_hist, queue_wait[q] * 0.5, queue_wait[q] * 1.5, warm_n[q])
                    hist[0] += float(warm_n[~queued].sum())
            idle_rows = np.flatnonzero(self.backlog > 0)
            if idle_rows.size:
                # Queues drain on idle ticks too.
                drain = (self.ready[idle_rows] * rps[idle_rows] * dt).astype(np.float64)
                inactive = n[idle_rows] == 0
                self.backlog[idle_rows[inactive]] = np.maximum(
                    0.0, self.backlog[idle_rows[inactive]] - drain[inactive]
                )
            # 4. accounting.
            if scored:
                held = (self.ready + self.pend_n) * weights
                busy = 1.0 - np.exp(-n * service / dt)
                # A queue is service owed: memory holding it is busy, however long it waits.
                busy = np.where(self.backlog > 0, 1.0, busy)
                idle_now = held * (1.0 - busy) * dt
                idle_per_model += idle_now
                idle_gb_s += float(idle_now.sum())
                held_gb_s += float(held.sum()) * dt
                node_s += float(self.nodes_up.sum() + sum(len(p) for p in self.provisioning)) * dt
                overflow_gb_s += max(0.0, self.held_gb - sim.budget_gb) * dt
            arrivals_prev = n
            if self.progress is not None and (k & 1023) == 1023:
                self.progress(1024)
        if self.progress is not None:
            self.progress(trace.ticks & 1023)
        scored_s = (trace.ticks - sim.warmup_ticks) * dt
        return SimResult(
            policy=policy.name,
            models=trace.models,
            requests=requests,
            cold=cold_total,
            wait_hist=hist,
            cold_wait_hist=cold_hist,
            queue_wait_hist=queue_hist,
            idle_gb_s=idle_gb_s,
            node_s=node_s,
            overflow_gb_s=overflow_gb_s,
            scored_s=scored_s,
            held_gb_s=held_gb_s,
            idle_gb_s_per_model=idle_per_model,
        )
