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
    """The observed nodes with the room left on each as one plan places preloads."""

    def __init__(self, nodes: Iterable[NodeState]) -> None:
        seen = [node for node in nodes if node.agent_seen]
        self._by_pool: dict[PoolName, list[NodeState]] = {}
        for node in sorted(seen, key=lambda n: n.name):
            self._by_pool.setdefault(node.pool, []).append(node)
        self._gpu_free = {node.name: node.free_gpu_bytes for node in seen}
        self._host_free = {node.name: node.free_host_bytes for node in seen}

    def has_nodes(self, pool: PoolName) -> bool:
        """Whether the pool has an observed node whose agent answered."""
        return bool(self._by_pool.get(pool))

    def _ordered(self, model: ModelId, pool: PoolName) -> list[NodeState]:
        def rank(node: NodeState) -> int:
            if node.holdings.get(model) == Tier.GPU:
                return 0
            if model in node.running:
                return 1
            if node.placeholder_gpus > 0:
                return 2
            return 3

        return sorted(self._by_pool.get(pool, []), key=rank)  # stable: by name within a rank

    def gpu(self, model: ModelId, pool: PoolName, nbytes: int, replicas: int) -> list[NodeName]:
        """Up to ``replicas`` distinct nodes for a GPU copy of ``model``; their room is taken."""
        chosen: list[NodeName] = []
        for node in self._ordered(model, pool):
            if len(chosen) >= replicas:
                break
            if node.holdings.get(model) == Tier.GPU:
                chosen.append(node.name)
            elif self._gpu_free[node.name] >= nbytes:
                self._gpu_free[node.name] -= nbytes
                chosen.append(node.name)
        return chosen

    def host(self, model: ModelId, pool: PoolName, nbytes: int) -> NodeName | None:
        """A node for a host-memory copy of ``model`` (one already holding it first)."""
        nodes = self._ordered(model, pool)
        for node in nodes:
            if node.holdings.get(model, Tier.REMOTE) >= Tier.HOST:
                return node.name
        for node in nodes:
            room = self._host_free[node.name]
            if room is None or room >= nbytes:
                if room is not None:
                    self._host_free[node.name] = room - nbytes
                return node.name
        return None

    def gpu_room_for(self, model: ModelId, pool: PoolName, nbytes: int) -> bool:
        """Whether a node of the pool holds ``model`` in GPU memory or has GPU room for it."""
        return any(
            node.holdings.get(model) == Tier.GPU or self._gpu_free[node.name] >= nbytes
            for node in self._by_pool.get(pool, [])
        )

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
        if tier == Tier.GPU and node in self._gpu_free:
            self._gpu_free[node] += nbytes
        room = self._host_free.get(node)
        if tier == Tier.HOST and room is not None:
            self._host_free[node] = room + nbytes

    def holders(self, model: ModelId, pool: PoolName, tier: Tier) -> list[NodeName]:
        """Nodes of ``pool`` whose agent holds ``model`` in ``tier``."""
        return [n.name for n in self._by_pool.get(pool, []) if n.holdings.get(model) == tier]
