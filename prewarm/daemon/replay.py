"""History and cluster stand-ins that let the daemon run without a cluster: the demo and tests.

- :class:`ReplaySource` replays a recorded :class:`SeriesBatch` (a trace) as if it were live: each
  ``fetch(now_s)`` returns the complete steps that ended since the previous call.
- :class:`PlannedClusterObserver` reports the cluster as the daemon's own latest plan left it
  (replicas at the planned floors, the plan's preloads resident on one node per pool, each node
  with a fixed amount of free GPU memory), which is what a perfectly obedient cluster would show.
  It is for dry runs and the demo, never a claim about a real cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from common.ids import ModelId, NodeName, PoolName
from forecaster.types import SeriesBatch
from planner.actions import Preload, ReplicaFloor, Tier, WarmPlan
from planner.catalog import GB
from planner.planner import ModelState, NodeState, PoolState
from prewarm.cycle.interfaces import ClusterSnapshot


class ReplaySource:
    """Replays ``batch`` against a clock: a step is returned once ``now_s`` passes its end."""

    def __init__(self, batch: SeriesBatch) -> None:
        self._batch = batch
        self._next = 0

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        """The complete steps that ended in ``(last fetch, now_s]``; None when there are none."""
        batch = self._batch
        complete = int((now_s - batch.start_s) // batch.step_s)
        complete = max(0, min(complete, batch.steps))
        if complete <= self._next:
            return None
        start = self._next
        self._next = complete
        return SeriesBatch(
            models=batch.models,
            start_s=batch.start_s + start * batch.step_s,
            step_s=batch.step_s,
            counts=batch.counts[:, start:complete],
        )


class PlannedClusterObserver:
    """A cluster that does exactly what the last plan asked (see the module docstring)."""

    def __init__(
        self,
        latest_plan: Callable[[], WarmPlan | None],
        *,
        pools: dict[PoolName, PoolState],
        nodes: Mapping[PoolName, NodeName] | None = None,
        node_gpu_bytes: int = 8 * 80 * GB,
    ) -> None:
        self._latest_plan = latest_plan
        self._pools = pools
        self._nodes = dict(nodes) if nodes is not None else {p: NodeName(f"{p}-0") for p in pools}
        self._node_gpu_bytes = node_gpu_bytes

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """Replicas at the planned floors and preloads resident, for every model asked about."""
        del now_s
        warm_plan = self._latest_plan()
        floors: dict[ModelId, int] = {}
        tiers: dict[ModelId, Tier] = {}
        held: dict[NodeName, dict[ModelId, Tier]] = {node: {} for node in self._nodes.values()}
        if warm_plan is not None:
            for floor in warm_plan.of_type(ReplicaFloor):
                floors[floor.model] = max(floors.get(floor.model, 0), floor.min_replicas)
            for preload in warm_plan.of_type(Preload):
                on = held.setdefault(preload.node, {})
                on[preload.model] = max(on.get(preload.model, Tier.REMOTE), preload.tier)
                if preload.tier is not Tier.GPU:
                    tiers[preload.model] = max(tiers.get(preload.model, Tier.REMOTE), preload.tier)
        states = {
            model: ModelState(
                model=model,
                ready_replicas=floors.get(model, 0),
                tier=tiers.get(model, Tier.DISK),
                image_cached=True,
            )
            for model in models
        }
        nodes = tuple(
            NodeState(
                name=node,
                pool=pool,
                free_gpu_bytes=self._node_gpu_bytes,
                holdings=held.get(node, {}),
                running=frozenset(m for m, n in floors.items() if n > 0),
            )
            for pool, node in sorted(self._nodes.items())
        )
        return ClusterSnapshot(models=states, pools=dict(self._pools), nodes=nodes)
