"""Reads the cluster into a :class:`ClusterSnapshot`: replicas per model, free GPUs per pool.

Owns: turning Kubernetes objects into the planner's observed state. Must not: write anything.
Reads go through the actuator's :class:`KubeClient` (retries, typed errors) in a worker thread.

What is read, and the quirks:
- Pools are the values of ``actuator.pool_label`` on nodes. A pool's GPUs are the sum of
  ``status.allocatable["nvidia.com/gpu"]`` over its Ready nodes; GPUs requested by running or
  pending-bound pods are used, *except* prewarm's own placeholders: they are preempted the moment a
  real pod needs the GPU, so for planning they count as free (and are reported separately).
- GPU memory per pool comes from the GPU feature discovery label ``nvidia.com/gpu.memory`` (MiB)
  when present, else the planner's default.
- A model's replicas are its workload's ``status.readyReplicas``; starting replicas are
  ``spec.replicas - readyReplicas`` (never negative).
- An image counts as cached in a pool when any node of the pool lists it in ``status.images``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from actuator.capacity import COMPONENT as PLACEHOLDER_COMPONENT
from actuator.capacity import GPU_RESOURCE
from actuator.config import ActuatorConfig
from actuator.floors import workload_resource
from actuator.kube import NODES, PODS, KubeClient, Obj
from common.ids import ModelId, PoolName
from planner.catalog import GB, Catalog
from planner.planner import ModelState, PoolState, workload_for
from prewarm.cycle.interfaces import ClusterSnapshot

_MIB = 1024 * 1024


class KubeClusterObserver:
    """Observes pools, placeholder capacity and workloads through ``kube``."""

    def __init__(self, kube: KubeClient, *, config: ActuatorConfig, catalog: Catalog) -> None:
        self._kube = kube
        self._config = config
        self._catalog = catalog

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """A snapshot of the pools and of every model in ``models``."""
        del now_s
        return await asyncio.to_thread(self._observe, list(models))

    def _observe(self, models: list[ModelId]) -> ClusterSnapshot:
        nodes = self._kube.list(NODES.path(), label_selector=self._config.pool_label)
        pods = self._kube.list(
            PODS.path(), field_selector="status.phase!=Succeeded,status.phase!=Failed"
        )
        pool_of: dict[str, PoolName] = {}
        allocatable: dict[PoolName, int] = {}
        memory: dict[PoolName, int] = {}
        images: dict[PoolName, set[str]] = {}
        for node in nodes:
            pool = PoolName(node["metadata"]["labels"][self._config.pool_label])
            pool_of[node["metadata"]["name"]] = pool
            allocatable.setdefault(pool, 0)
            images.setdefault(pool, set())
            if not _ready(node):
                continue
            status = node.get("status") or {}
            allocatable[pool] += _quantity((status.get("allocatable") or {}).get(GPU_RESOURCE))
            label_mib = (node["metadata"].get("labels") or {}).get("nvidia.com/gpu.memory")
            if label_mib and str(label_mib).isdigit():
                memory[pool] = max(memory.get(pool, 0), int(label_mib) * _MIB)
            for image in status.get("images") or []:
                images[pool].update(image.get("names") or [])
        used: dict[PoolName, int] = {}
        placeholders: dict[PoolName, int] = {}
        for pod in pods:
            pod_pool = pool_of.get((pod.get("spec") or {}).get("nodeName") or "")
            labels = pod["metadata"].get("labels") or {}
            gpus = _pod_gpus(pod)
            if labels.get("app.kubernetes.io/component") == PLACEHOLDER_COMPONENT:
                owner = pod_pool or PoolName(labels.get("prewarm.io/pool", ""))
                if owner:
                    placeholders[owner] = placeholders.get(owner, 0) + gpus
                continue
            if pod_pool is not None:
                used[pod_pool] = used.get(pod_pool, 0) + gpus
        pools = {
            pool: PoolState(
                pool=pool,
                free_gpus=max(0, allocatable[pool] - used.get(pool, 0)),
                gpu_memory_bytes=memory.get(pool, 80 * GB),
            )
            for pool in allocatable
        }
        states = {model: self._model_state(model, images) for model in models}
        return ClusterSnapshot(models=states, pools=pools, placeholder_gpus=placeholders)

    def _model_state(self, model: ModelId, images: dict[PoolName, set[str]]) -> ModelState:
        spec = self._catalog.spec(model)
        workload = workload_for(spec)
        obj = self._kube.get(workload_resource(workload).path(workload.namespace, workload.name))
        ready = starting = 0
        if obj is not None:
            ready = int((obj.get("status") or {}).get("readyReplicas") or 0)
            wanted = int((obj.get("spec") or {}).get("replicas") or 0)
            starting = max(0, wanted - ready)
        return ModelState(
            model=model,
            ready_replicas=ready,
            starting_replicas=starting,
            image_cached=spec.image in images.get(spec.node_pool, set()),
        )


def _ready(node: Obj) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _pod_gpus(pod: Obj) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        limits = (container.get("resources") or {}).get("limits") or {}
        # Extended resources must have requests == limits; either may be the one that is set.
        total += _quantity(requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE)))
    return total


def _quantity(value: Any) -> int:
    """A whole-number resource quantity ("4", 4); GPUs are never fractional."""
    if value is None:
        return 0
    try:
        return int(str(value))
    except ValueError:
        return 0
