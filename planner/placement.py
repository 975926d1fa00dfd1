"""Where a plan's preloads and evictions go: real nodes of the model's pool, as observed.

Owns: the order in which nodes of a pool take a model's preloads and the room each has left while
one plan is made. A node is named only when it was observed and its agent answered
(:attr:`planner.planner.NodeState.agent_seen`): an action never names a node that does not exist,
and a pool name is never a node name. Pure: no I/O.

Order for a GPU preload (one per planned replica, on distinct nodes, while memory allows): nodes
whose agent already holds the model in GPU memory (no room needed), then nodes running the model's
pods, then nodes holding the pool's capacity placeholders (where the next replicas will be
scheduled), then the pool's other nodes, each group by name. A host preload goes to the first node
of the same order with host room; so does a GPU preload that no node has GPU room for (a node
without a GPU reports none). Evictions go to every node holding the model in that tier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from common.ids import ModelId, NodeName, PoolName
from common.tiers import Tier


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node of a pool as observed now: where preloads can go and what it already holds.

    - ``free_gpu_bytes``: GPU memory its agent can still fill (free minus headroom, all GPUs);
    - ``free_host_bytes``: host-tier room its agent reports (None: unknown);
    - ``holdings``: the fastest tier the node's agent holds each model in;
    - ``running``: models with a serving pod on the node;
    - ``placeholder_gpus``: GPUs held by prewarm's capacity placeholders on the node;
    - ``agent_seen``: its agent answered this observation (False: the node's holdings are
      unknown this tick; nothing is placed on it).
    """

    name: NodeName
    pool: PoolName
    free_gpu_bytes: int
    free_host_bytes: int | None = None
    holdings: Mapping[ModelId, Tier] = field(default_factory=dict)
    running: frozenset[ModelId] = frozenset()
    placeholder_gpus: int = 0
    agent_seen: bool = True


class Placement:
    """The observed nodes with the room left on each as one plan places preloads.

    Built once per plan; each query costs the nodes that hold or run the model plus, only when
    some node of the pool may still have room, a walk of the pool's other nodes.
    """

    def __init__(self, nodes: Iterable[NodeState]) -> None:
        seen = sorted((node for node in nodes if node.agent_seen), key=lambda n: n.name)
        self._by_pool: dict[PoolName, list[NodeState]] = {}
        self._base: dict[PoolName, list[NodeState]] = {}
        """Each pool's nodes in the order new copies go: placeholder nodes first, by name."""
        self._held: dict[tuple[ModelId, Tier], list[NodeState]] = {}
        self._running: dict[ModelId, list[NodeState]] = {}
        for node in seen:
            self._by_pool.setdefault(node.pool, []).append(node)
            for model, tier in node.holdings.items():
                self._held.setdefault((model, tier), []).append(node)
            for model in node.running:
                self._running.setdefault(model, []).append(node)
        for pool, members in self._by_pool.items():
            self._base[pool] = sorted(members, key=lambda n: n.placeholder_gpus <= 0)
        self._gpu_free = {node.name: node.free_gpu_bytes for node in seen}
        self._host_free = {node.name: node.free_host_bytes for node in seen}
        self._gpu_max: dict[PoolName, float] = {
            pool: max(self._gpu_free[n.name] for n in members)
            for pool, members in self._by_pool.items()
        }
        self._host_max = {pool: self._largest_host_room(pool) for pool in self._by_pool}
        self._pool_of = {node.name: node.pool for node in seen}
        self._holding = {model for model, _ in self._held}

    def holds_any(self) -> bool:
        """Whether any observed node holds any model in any tier."""
        return bool(self._held)

    def holds(self, model: ModelId) -> bool:
        """Whether any observed node holds ``model`` in any tier (a superset of what
        :meth:`holders` names for one pool and tier)."""
        return model in self._holding

    def has_nodes(self, pool: PoolName) -> bool:
        """Whether the pool has an observed node whose agent answered."""
        return bool(self._by_pool.get(pool))

    def _of(self, model: ModelId, pool: PoolName, tier: Tier) -> list[NodeState]:
        if model not in self._holding:  # most models, checked without hashing a (model, tier) key
            return []
        return [n for n in self._held.get((model, tier), ()) if n.pool == pool]

    def _preferred(self, model: ModelId, pool: PoolName) -> list[NodeState]:
        """Nodes holding the model in GPU memory, then nodes running its pods (no repeats)."""
        first = self._of(model, pool, Tier.GPU)
        names = {n.name for n in first}
        return first + [
            n for n in self._running.get(model, ()) if n.pool == pool and n.name not in names
        ]

    def gpu(self, model: ModelId, pool: PoolName, nbytes: int, replicas: int) -> list[NodeName]:
        """Up to ``replicas`` distinct nodes for a GPU copy of ``model``; their room is taken."""
        if pool not in self._by_pool:  # no observed node of the pool: nothing to choose from
            return []
        chosen: list[NodeName] = []
        preferred = self._preferred(model, pool)
        rest = self._base.get(pool, []) if self._gpu_max.get(pool, 0) >= nbytes else []
        first = {n.name for n in preferred}
        for node in [*preferred, *(n for n in rest if n.name not in first)]:
            if len(chosen) >= replicas:
                break
            if node.holdings.get(model) == Tier.GPU:
                chosen.append(node.name)
            elif self._gpu_free[node.name] >= nbytes:
                self._gpu_free[node.name] -= nbytes
                if self._gpu_free[node.name] + nbytes >= self._gpu_max[pool]:
                    self._gpu_max[pool] = max(self._gpu_free[n.name] for n in self._by_pool[pool])
                chosen.append(node.name)
        return chosen

    def host(self, model: ModelId, pool: PoolName, nbytes: int) -> NodeName | None:
        """A node for a host-memory copy of ``model`` (one already holding it first)."""
        for tier in (Tier.HOST, Tier.GPU):
            held = self._of(model, pool, tier)
            if held:
                return held[0].name
        if self._host_max.get(pool, 0) < nbytes:
            return None
        preferred = self._preferred(model, pool)
        first = {n.name for n in preferred}
        rest = (n for n in self._base.get(pool, []) if n.name not in first)
        for node in [*preferred, *rest]:
            room = self._host_free[node.name]
            if room is None:
                return node.name
            if room >= nbytes:
                self._host_free[node.name] = room - nbytes
                if room >= self._host_max[pool]:
                    self._host_max[pool] = self._largest_host_room(pool)
                return node.name
        return None

    def _largest_host_room(self, pool: PoolName) -> float:
        return max(
            math.inf if (room := self._host_free[n.name]) is None else room
            for n in self._by_pool[pool]
        )

    def gpu_room_for(self, model: ModelId, pool: PoolName, nbytes: int) -> bool:
        """Whether a node of the pool holds ``model`` in GPU memory or has GPU room for it."""
        return bool(self._of(model, pool, Tier.GPU)) or self._gpu_max.get(pool, 0) >= nbytes

    def host_capacity(self, pool: PoolName, bytes_of: Callable[[ModelId], int]) -> float:
        """Bytes the pool's host tiers can hold: each node's free room plus what it holds there
        (``inf`` while a node does not report its room, or the pool has no observed node)."""
        nodes = self._by_pool.get(pool, [])
        if not nodes or any(node.free_host_bytes is None for node in nodes):
            return float("inf")
        return float(
            sum(
                (node.free_host_bytes or 0)
                + sum(bytes_of(m) for m, tier in node.holdings.items() if tier == Tier.HOST)
                for node in nodes
            )
        )

    def release(self, node: NodeName, tier: Tier, nbytes: int) -> None:
        """``nbytes`` of ``tier`` on ``node`` become free (an eviction in the same plan)."""
        pool = self._pool_of.get(node)
        if pool is None:
            return
        if tier == Tier.GPU:
            self._gpu_free[node] += nbytes
            self._gpu_max[pool] = max(self._gpu_max[pool], self._gpu_free[node])
        room = self._host_free.get(node)
        if tier == Tier.HOST and room is not None:
            self._host_free[node] = room + nbytes
            self._host_max[pool] = max(self._host_max[pool], room + nbytes)

    def holders(self, model: ModelId, pool: PoolName, tier: Tier) -> list[NodeName]:
        """Nodes of ``pool`` whose agent holds ``model`` in ``tier``."""
        if model not in self._holding:
            return []
        return [n.name for n in self._of(model, pool, tier)]
