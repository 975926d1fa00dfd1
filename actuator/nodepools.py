"""Karpenter NodePools (``karpenter.sh/v1``) as prewarm pools: names, limits, GPUs per node.

Owns reading NodePool objects and what prewarm takes from them, so a pool is known before it has
a node (a NodePool scaled to zero still gets a node lead time, and placeholders for it):

- the pool: the NodePool's template label ``actuator.pool_label`` when it sets one (Karpenter
  copies ``spec.template.metadata.labels`` onto every node it launches), else the NodePool's own
  name when ``pool_label`` is ``karpenter.sh/nodepool`` (the label Karpenter puts on its nodes);
  any other NodePool is no prewarm pool;
- ``spec.limits``: the most capacity (the sum of its nodes' ``status.capacity``) the NodePool may
  launch, per resource (``nvidia.com/gpu``, ``cpu``, ``memory``, ...) and ``nodes`` (a count);
- GPUs per node: the largest value of an ``In`` requirement on
  ``karpenter.k8s.aws/instance-gpu-count`` (AWS) or ``karpenter.azure.com/sku-gpu-count`` (Azure)
  in ``spec.template.spec.requirements``; other operators (``Gt``, ``Exists``) say too little;
- GPU memory: the largest ``In`` value of ``karpenter.k8s.aws/instance-gpu-memory`` (MiB per GPU).

Karpenter not installed (the API not served) is no error: there are no NodePools. Must not: write
anything, or fail for one malformed NodePool (its ``problem`` says what to fix; the others stand).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from actuator.config import ActuatorConfig
from actuator.kube import KubeClient, Obj, Resource
from common.errors import InvalidInput, PermissionDenied
from common.ids import PoolName

_log = logging.getLogger(__name__)

API_VERSION = "karpenter.sh/v1"
NODE_POOLS = Resource(API_VERSION, "nodepools", namespaced=False)
KARPENTER_POOL_LABEL = "karpenter.sh/nodepool"
GPU_COUNT_KEYS = ("karpenter.k8s.aws/instance-gpu-count", "karpenter.azure.com/sku-gpu-count")
GPU_MEMORY_MIB_KEY = "karpenter.k8s.aws/instance-gpu-memory"
NODES_LIMIT = "nodes"
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class NodePoolInfo:
    """What prewarm takes from one NodePool. ``problem`` (with empty ``limits``) when its limits
    cannot be read: then nothing may be placed for it until it is fixed."""

    name: str
    pool: PoolName
    limits: Mapping[str, Decimal] = field(default_factory=dict)
    gpus_per_node: int | None = None
    gpu_memory_bytes: int | None = None
    problem: str | None = None


def quantity(value: Any, *, where: str) -> Decimal:
    """A Kubernetes resource quantity ("4", "1500m", "2Gi", 4) as a Decimal.

    Raises :class:`InvalidInput` naming ``where`` for anything else.
    """
    try:
        return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, InvalidOperation) as error:
        raise InvalidInput(f"{where}: {value!r} is not a Kubernetes quantity") from error


def pool_of(node_pool: Obj, pool_label: str) -> PoolName | None:
    """The prewarm pool of ``node_pool`` (see the module docstring), or None."""
    template = ((node_pool.get("spec") or {}).get("template") or {}).get("metadata") or {}
    labelled = (template.get("labels") or {}).get(pool_label)
    if labelled:
        return PoolName(str(labelled))
    if pool_label == KARPENTER_POOL_LABEL:
        return PoolName(str(node_pool["metadata"]["name"]))
    return None


def parse_node_pool(node_pool: Obj, pool_label: str) -> NodePoolInfo | None:
    """``node_pool`` read as a :class:`NodePoolInfo`; None when it is no prewarm pool."""
    pool = pool_of(node_pool, pool_label)
    if pool is None:
        return None
    name = str(node_pool["metadata"]["name"])
    spec = node_pool.get("spec") or {}
    requirements = ((spec.get("template") or {}).get("spec") or {}).get("requirements") or []
    gpus = _largest_in(requirements, GPU_COUNT_KEYS)
    memory_mib = _largest_in(requirements, (GPU_MEMORY_MIB_KEY,))
    limits: dict[str, Decimal] = {}
    problem: str | None = None
    try:
        limits = _limits(name, spec.get("limits"))
    except InvalidInput as error:
        problem = str(error)
    return NodePoolInfo(
        name=name,
        pool=pool,
        limits=limits,
        gpus_per_node=gpus,
        gpu_memory_bytes=memory_mib * _MIB if memory_mib else None,
        problem=problem,
    )


def _limits(name: str, raw: Any) -> dict[str, Decimal]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"NodePool {name}: spec.limits is not a map of resource to quantity")
    limits: dict[str, Decimal] = {}
    for resource, value in raw.items():
        where = f"NodePool {name}: spec.limits[{resource!r}]"
        amount = quantity(value, where=where)
        if amount < 0:
            raise InvalidInput(f"{where} is {value!r}, below 0; fix the NodePool's limits")
        if resource in (NODES_LIMIT, "nvidia.com/gpu") and amount != amount.to_integral_value():
            raise InvalidInput(f"{where} is {value!r}, not a whole number; fix the NodePool")
        limits[str(resource)] = amount
    return limits


def _largest_in(requirements: Any, keys: tuple[str, ...]) -> int | None:
    """The largest whole value of an ``In`` requirement on one of ``keys`` (None: none)."""
    found: list[int] = []
    for requirement in requirements if isinstance(requirements, list) else []:
        if not isinstance(requirement, Mapping) or requirement.get("key") not in keys:
            continue
        if requirement.get("operator") != "In":
            continue
        found += [int(v) for v in requirement.get("values") or [] if str(v).isdigit()]
    return max(found) if found else None


class NodePoolReader:
    """Lists the NodePools that are prewarm pools (none when Karpenter is not installed)."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config
        self._refused = False

    def read(self) -> dict[PoolName, NodePoolInfo]:
        """The NodePools by pool (the first by name when two name the same pool).

        Raises the Kubernetes client's errors (a 403: grant ``list`` on nodepools.karpenter.sh,
        the chart's ``rbac.karpenter``).
        """
        # Discovery is readable by every authenticated user: a cluster without Karpenter answers
        # 404 here, where listing the resource could answer 403 before it answered 404.
        if not self._kube.served(API_VERSION):
            return {}
        found: dict[PoolName, NodePoolInfo] = {}
        items = self._kube.list(NODE_POOLS.path())
        for item in sorted(items, key=lambda obj: str(obj["metadata"]["name"])):
            info = parse_node_pool(item, self._config.pool_label)
            if info is not None and info.pool not in found:
                found[info.pool] = info
        return found

    def read_or_none(self) -> dict[PoolName, NodePoolInfo]:
        """:meth:`read`, but a refusal (403) is logged and reads as no NodePools (the observer:
        one missing permission must not stop the whole observation)."""
        try:
            found = self.read()
        except PermissionDenied as error:
            if not self._refused:  # once per outage, not every tick
                _log.warning(
                    "cannot list Karpenter NodePools (grant list on nodepools.karpenter.sh: the "
                    "chart's rbac.karpenter); pools are known from their nodes only: %s",
                    error,
                )
            self._refused = True
            return {}
        self._refused = False
        return found
