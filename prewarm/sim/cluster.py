"""The simulated cluster: node pools, cold-start stage costs and the per-model cost table.

Defaults describe a typical H100 fleet; every number is a field so a user can describe their own.
A cold start runs its stages in order: a node (provisioning delay, lognormal) if no GPU is free, the
serving image (pull bandwidth, cached per pool once pulled), the container start, the weights (from
the fastest tier that holds them: host RAM, node disk, or remote storage, then host -> GPU), and the
compile/warm-up step (shortened when compiled artifacts are already in the node's disk cache).

Approximation, stated once: caches (images, weights on disk, compiled artifacts) are tracked per
pool, not per node; a start that needs a *new* node pays the full chain (no caches there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.errors import InvalidInput
from common.ids import ModelId, PoolName
from planner.catalog import DEFAULT_POOL, Catalog, ModelSpec

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One node pool: GPUs per node, GPU memory, provisioning delay, bandwidths and caches."""

    name: PoolName = DEFAULT_POOL
    gpu_memory_gb: float = 80.0
    gpus_per_node: int = 8
    min_nodes: int = 0
    max_nodes: int = 100_000
    provision_median_s: float = 180.0
    """Median node provisioning delay (cloud VM + kubelet + GPU driver ready): 2-4 min typical."""
    provision_sigma: float = 0.25
    """Lognormal shape of the provisioning delay."""
    image_pull_gbps: float = 0.2
    """Image pull and extract, GB/s (registry download plus layer extraction)."""
    container_start_s: float = 5.0
    remote_gbps: float = 1.0
    """Weights from remote object storage to the node, GB/s."""
    disk_gbps: float = 2.5
    """Weights from node-local NVMe to host memory, GB/s."""
    host_to_gpu_gbps: float = 20.0
    """Pinned host memory to GPU over PCIe, GB/s."""
    host_cache_gb_per_node: float = 512.0
    compile_cached_fraction: float = 0.25
    """Share of ``compile_s`` still paid when compiled artifacts are in the disk cache."""
    scale_down_unneeded_s: float = 600.0
    """Cluster-autoscaler removes a node unneeded for this long (its default is 10 min)."""

    def __post_init__(self) -> None:
        positive = (
            "gpu_memory_gb",
            "provision_median_s",
            "image_pull_gbps",
            "remote_gbps",
            "disk_gbps",
            "host_to_gpu_gbps",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidInput(f"pool {self.name}: {name} must be > 0")
        if self.gpus_per_node < 1 or self.min_nodes < 0 or self.max_nodes < self.min_nodes:
            raise InvalidInput(f"pool {self.name}: need gpus_per_node >= 1, 0 <= min <= max nodes")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The pools a simulated cluster has; a model's ``node_pool`` missing here uses the first."""

    pools: tuple[PoolSpec, ...] = (PoolSpec(),)
    kv_headroom: float = 0.25
    """GPU memory a replica needs beyond its weights (KV cache, activations), as a share."""

    def pool_index(self, name: PoolName) -> int:
        """Index of pool ``name`` (the first pool when it is unknown)."""
        for index, pool in enumerate(self.pools):
            if pool.name == name:
                return index
        return 0


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Per-model cost arrays (index ``i`` is ``models[i]``) built from the catalog."""

    models: tuple[ModelId, ...]
    specs: tuple[ModelSpec, ...]
    weights_gb: FloatArray
    image_gb: FloatArray
    image_key: IntArray
    """Index of the (pool, image) pair, for the per-pool image cache."""
    replica_rps: FloatArray
    compile_s: FloatArray
    service_s: FloatArray
    pool: IntArray
    gpus_per_replica: IntArray
    min_replicas: IntArray
    max_replicas: IntArray
    image_keys: int = field(default=0)
    pool_params: dict[str, FloatArray] = field(default_factory=dict)
    """Per-model copies of the pool's numbers (bandwidths, delays), by :class:`PoolSpec` field."""

    @property
    def size(self) -> int:
        """Number of models."""
        return len(self.models)


def _gpus_for(weights_gb: float, *, gpu_memory_gb: float, headroom: float) -> int:
    """GPUs one replica needs: weights plus headroom, tensor-parallel over a power of two."""
    needed = max(1, math.ceil(weights_gb * (1.0 + headroom) / gpu_memory_gb))
    return 1 << (needed - 1).bit_length()


def build_model_table(
    models: Sequence[ModelId], catalog: Catalog, cluster: ClusterSpec
) -> ModelTable:
    """The cost table of ``models``: catalog entries, or the documented defaults."""
    specs = tuple(catalog.spec(model) for model in models)
    pools = np.array([cluster.pool_index(spec.node_pool) for spec in specs], dtype=np.int64)
    keys: dict[tuple[int, str], int] = {}
    image_key = np.array(
        [keys.setdefault((int(p), s.image), len(keys)) for p, s in zip(pools, specs, strict=True)],
        dtype=np.int64,
    )
    gpus = np.array(
        [
            _gpus_for(
                s.weights_gb,
                gpu_memory_gb=cluster.pools[int(p)].gpu_memory_gb,
                headroom=cluster.kv_headroom,
            )
            for p, s in zip(pools, specs, strict=True)
        ],
        dtype=np.int64,
    )
    return ModelTable(
        models=tuple(models),
        specs=specs,
        weights_gb=np.array([s.weights_gb for s in specs], dtype=np.float64),
        image_gb=np.array([s.image_gb for s in specs], dtype=np.float64),
        image_key=image_key,
        replica_rps=np.array([s.replica_rps for s in specs], dtype=np.float64),
        compile_s=np.array([s.compile_s for s in specs], dtype=np.float64),
        service_s=np.array([s.service_s for s in specs], dtype=np.float64),
        pool=pools,
        gpus_per_replica=gpus,
        min_replicas=np.array([s.min_replicas for s in specs], dtype=np.int64),
        max_replicas=np.array([s.max_replicas for s in specs], dtype=np.int64),
        image_keys=len(keys),
        pool_params={
            name: np.array([float(getattr(cluster.pools[int(p)], name)) for p in pools])
            for name in _POOL_PARAMS
        },
    )


_POOL_PARAMS = (
    "image_pull_gbps",
    "remote_gbps",
    "disk_gbps",
    "host_to_gpu_gbps",
    "container_start_s",
    "compile_cached_fraction",
    "provision_median_s",
    "provision_sigma",
)


def warm_node_chain_s(
    table: ModelTable,
    cluster: ClusterSpec,
    *,
    tier: IntArray,
    image_cached: BoolArray | None = None,
) -> FloatArray:
    """Seconds of a start on an existing node, given the fastest tier holding the weights.

    ``tier`` per model: 0 remote, 1 disk, 2 host (see :class:`planner.actions.Tier`).
    """
    params = table.pool_params
    pull = params["image_pull_gbps"]
    remote = params["remote_gbps"]
    disk = params["disk_gbps"]
    h2d = params["host_to_gpu_gbps"]
    start = params["container_start_s"]
    cached_fraction = params["compile_cached_fraction"]
    image = np.zeros(table.size) if image_cached is None else np.where(image_cached, 0.0, 1.0)
    image_s = image * table.image_gb / pull
    weights = table.weights_gb
    to_host = np.where(tier == 1, weights / disk, weights / remote)
    weights_s = np.where(tier >= 2, weights / h2d, to_host + weights / h2d)
    compile_s = np.where(tier >= 1, table.compile_s * cached_fraction, table.compile_s)
    result: FloatArray = image_s + start + weights_s + compile_s
    return result
