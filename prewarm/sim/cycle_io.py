"""The decision cycle's boundaries over the simulated cluster: history, observer, applier.

Owns: what the simulated cluster shows the cycle and how a plan acts on it, behind the same
protocols the daemon implements over Prometheus, Kubernetes and the GPU agents
(:mod:`prewarm.cycle.interfaces`):

- :class:`SimHistory` turns each tick's arrivals into complete history steps on the forecast grid,
  returned by ``fetch`` once they have ended (Prometheus' range query);
- :class:`SimClusterObserver` reports replicas, the fastest tier holding each model's weights,
  cached images and free GPUs as they are now, and a stage's duration only once the start it
  belonged to has finished (node provisioned, image pulled, weights loaded, compiled): lead times
  are learned from these observations, as in a real cluster;
- :class:`SimPlanApplier` turns a plan into the simulator's :class:`prewarm.sim.engine.Decision`
  arrays, as the actuator turns it into Kubernetes objects and agent calls: replica floors as
  targets and their value density as the order in which replicas give way to memory pressure,
  host preloads as the host tier, image pre-pulls, placeholder GPUs. (GPU preloads name nodes
  for the agents' spare memory, which the simulator does not model apart from replicas.)

Must not: decide anything. Every method is a coroutine that completes without waiting
(:func:`resolved` runs one); the simulated cluster never blocks.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from common.ids import ModelId, NodeName, PoolName
from forecaster.types import SeriesBatch
from planner.actions import (
    ActionResult,
    ImagePrepull,
    NodeCapacity,
    Preload,
    ReplicaFloor,
    Tier,
    WarmPlan,
)
from planner.catalog import GB
from planner.leadtime import Stage, StageObservation
from planner.planner import ModelState, NodeState, PoolState
from prewarm.cycle.interfaces import ClusterSnapshot
from prewarm.sim.cluster import IntArray
from prewarm.sim.engine import Decision, Observation, SimSetup, StartRecord

T = TypeVar("T")

TIERS = (Tier.REMOTE, Tier.DISK, Tier.HOST)
"""The simulator's tier codes below GPU (0 remote, 1 disk, 2 host) as the cycle's tiers."""


def resolved(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (every method of this module)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a simulated cluster call waited; the simulator has no event loop")


class SimHistory:
    """Arrivals per tick, delivered as complete steps of ``step_ticks`` ticks."""

    def __init__(self, setup: SimSetup, *, step_ticks: int) -> None:
        self._models = setup.table.models
        self._dt_s = setup.dt_s
        self._step_ticks = step_ticks
        self._pending = np.zeros((setup.table.size, step_ticks))
        self._fill = 0
        self._steps: list[np.ndarray] = []
        self._first_start_s: float | None = None

    def record(self, arrivals: IntArray, *, tick_end_s: float) -> None:
        """Add the arrivals of the tick that ended at ``tick_end_s``."""
        self._pending[:, self._fill] = arrivals
        self._fill += 1
        if self._fill < self._step_ticks:
            return
        if not self._steps:
            self._first_start_s = tick_end_s - self._step_ticks * self._dt_s
        self._steps.append(self._pending.sum(axis=1))
        self._fill = 0

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        """Every step completed since the last fetch (None: none)."""
        del now_s  # steps are complete when recorded; the simulator records only the past
        if not self._steps or self._first_start_s is None:
            return None
        batch = SeriesBatch(
            models=self._models,
            start_s=self._first_start_s,
            step_s=self._step_ticks * self._dt_s,
            counts=np.stack(self._steps, axis=1),
        )
        self._first_start_s = batch.end_s
        self._steps = []
        return batch


class SimClusterObserver:
    """The simulated cluster as the cycle sees it; :meth:`see` hands it the tick's observation."""

    def __init__(self, setup: SimSetup) -> None:
        self._setup = setup
        self._observation: Observation | None = None
        self._finished: list[StartRecord] = []

    def see(self, observation: Observation) -> None:
        """The cluster at this tick; starts that finished since the last tick are kept until the
        next :meth:`observe` reports them."""
        self._observation = observation
        self._finished.extend(observation.finished)

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """Replicas, tiers, images and pools now, and the stage durations that finished."""
        del now_s, models  # the simulator observes every model at its own clock
        obs = self._observation
        if obs is None:
            raise RuntimeError("observe() before the simulator showed the cluster (see())")
        table = self._setup.table
        ready, pending, tier = obs.ready.tolist(), obs.pending.tolist(), obs.tier.tolist()
        cached = obs.image_cached.tolist()
        states = {
            model: ModelState(
                model=model,
                ready_replicas=ready[i],
                starting_replicas=pending[i],
                tier=TIERS[tier[i]],
                image_cached=cached[i],
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
            for p, spec in enumerate(self._setup.cluster.pools)
        }
        finished, self._finished = self._finished, []
        return ClusterSnapshot(
            models=states,
            pools=pools,
            nodes=self._nodes(obs),
            stage_observations=self._stage_observations(finished),
        )

    def _nodes(self, obs: Observation) -> tuple[NodeState, ...]:
        """The pools' up nodes. The simulator tracks models per pool, not per node: a model's
        replicas and host copy are reported on node ``model index mod nodes`` of its pool, and
        each node has an equal share of the pool's free GPUs and its own host cache."""
        table = self._setup.table
        nodes: list[NodeState] = []
        gpu_copies = (obs.ready + obs.pending) > 0
        for p, spec in enumerate(self._setup.cluster.pools):
            count = int(obs.nodes[p])
            if count == 0:
                continue
            members = np.flatnonzero(table.pool == p)
            holdings: list[dict[ModelId, Tier]] = [{} for _ in range(count)]
            running: list[set[ModelId]] = [set() for _ in range(count)]
            host_used = np.zeros(count)
            for i in members.tolist():
                k = i % count
                model = table.models[i]
                if gpu_copies[i]:
                    holdings[k][model] = Tier.GPU
                    running[k].add(model)
                elif int(obs.tier[i]) > 0:
                    holdings[k][model] = TIERS[int(obs.tier[i])]
                if int(obs.tier[i]) == 2:
                    host_used[k] += float(table.weights_gb[i]) * GB
            free_gpu = int(obs.free_gpus[p]) * round(spec.gpu_memory_gb * GB) // count
            host_bytes = spec.host_cache_gb_per_node * GB
            nodes.extend(
                NodeState(
                    name=NodeName(f"{spec.name}-{k}"),
                    pool=spec.name,
                    free_gpu_bytes=free_gpu,
                    free_host_bytes=max(0, round(host_bytes - host_used[k])),
                    holdings=holdings[k],
                    running=frozenset(running[k]),
                )
                for k in range(count)
            )
        return tuple(nodes)

    def _stage_observations(self, finished: list[StartRecord]) -> tuple[StageObservation, ...]:
        table = self._setup.table
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
        return tuple(items)


class SimPlanApplier:
    """Keeps the simulator's standing :class:`Decision` in line with the latest applied plan."""

    def __init__(self, setup: SimSetup) -> None:
        table = setup.table
        self._setup = setup
        self._index = {model: i for i, model in enumerate(table.models)}
        self._image_index: dict[tuple[PoolName, str], list[int]] = {}
        for i, spec in enumerate(table.specs):
            self._image_index.setdefault((spec.node_pool, spec.image), []).append(i)
        self.decision = Decision(
            target=np.zeros(table.size, np.int64),
            priority=np.zeros(table.size),
            host=np.zeros(table.size, np.bool_),
            prepull=np.zeros(table.size, np.bool_),
            node_gpus=np.zeros(len(setup.cluster.pools), np.int64),
        )

    async def apply(self, plan: WarmPlan, *, dry_run: bool) -> Sequence[ActionResult]:
        """Make ``plan`` the cluster's standing decision; one ``ok`` per action."""
        if dry_run:
            return [ActionResult(action, "dry_run") for action in plan.actions]
        size = self._setup.table.size
        target = np.zeros(size, np.int64)
        priority = np.zeros(size)
        host = np.zeros(size, np.bool_)
        prepull = np.zeros(size, np.bool_)
        node_gpus = np.zeros(len(self._setup.cluster.pools), np.int64)
        index = self._index
        for action in plan.actions:
            if isinstance(action, ReplicaFloor):
                target[index[action.model]] = action.min_replicas
                priority[index[action.model]] = action.value_per_byte * GB
            elif isinstance(action, Preload) and action.tier == Tier.HOST:
                host[index[action.model]] = True
            elif isinstance(action, ImagePrepull):
                prepull[self._image_index.get((action.pool, action.image), [])] = True
            elif isinstance(action, NodeCapacity):
                node_gpus[self._setup.cluster.pool_index(action.pool)] += action.gpus
        self.decision = Decision(
            target=target, priority=priority, host=host, prepull=prepull, node_gpus=node_gpus
        )
        return [ActionResult(action, "ok") for action in plan.actions]
