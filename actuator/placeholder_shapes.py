"""What one placeholder pod requests and where it may run: one replica's worth of a model.

Owns :class:`PodShape` (from a workload's pod template, :func:`workload_shape`, or from a pool's
configured shape, :func:`pool_shape`) and :class:`Room`, what a Karpenter NodePool's
``spec.limits`` still allow the pool's placeholders to request. Pure: no API calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from actuator.config import ActuatorConfig
from actuator.kube import Obj
from actuator.nodepools import NODES_LIMIT, quantity
from common.errors import InvalidInput
from common.ids import PoolName
from planner.actions import WorkloadRef

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION: Obj = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True, slots=True)
class PodShape:
    """What one placeholder pod requests and where it may run: one replica's worth."""

    gpus: int
    cpu: Decimal
    """Cores."""
    memory: Decimal
    """Bytes."""
    tolerations: tuple[Obj, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity: Obj | None = None
    topology_spread: tuple[Obj, ...] = ()

    def requests(self) -> dict[str, Decimal]:
        """Per resource, what one pod requests (the resources a NodePool limit may bound)."""
        return {GPU_RESOURCE: Decimal(self.gpus), "cpu": self.cpu, "memory": self.memory}


def pool_shape(config: ActuatorConfig, pool: PoolName) -> PodShape:
    """The shape of ``pool``'s placeholders that no workload shapes: ``pools.<pool>.placeholder``
    over ``placeholder`` (raises :class:`InvalidInput` for an unreadable quantity)."""
    base = config.placeholder
    own = config.pool(pool).placeholder
    tolerations = own.tolerations if own.tolerations is not None else [GPU_TOLERATION]
    return PodShape(
        gpus=own.gpus_per_pod or base.gpus_per_pod,
        cpu=quantity(own.cpu_request or base.cpu_request, where=f"pool {pool} cpu_request"),
        memory=quantity(
            own.memory_request or base.memory_request, where=f"pool {pool} memory_request"
        ),
        tolerations=tuple(tolerations),
        node_selector=dict(own.node_selector),
    )


class NoGpuRequest(InvalidInput):
    """A workload's pod template that requests no GPU (the pool's shape stands in for it)."""


def workload_shape(workload: Obj, ref: WorkloadRef) -> PodShape:
    """One replica of ``workload`` (a Deployment, StatefulSet or anything with
    ``spec.template``) as a placeholder shape.

    A pod's effective request is, per resource, the larger of its containers' sum and its largest
    init container (init containers run one at a time, before the others); a container that sets
    only a limit requests that limit (the API server defaults requests to limits). GPUs are read
    from ``limits["nvidia.com/gpu"]`` (extended resources: requests, when set, equal limits).
    Raises :class:`InvalidInput` when the template requests no whole number of GPUs or a
    quantity is unreadable.
    """
    where = f"{ref.kind} {ref.namespace}/{ref.name}"
    template = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
    totals: dict[str, Decimal] = {}
    init_max: dict[str, Decimal] = {}
    for kind, into in (("containers", totals), ("initContainers", init_max)):
        for container in template.get(kind) or []:
            resources = container.get("resources") or {}
            limits = resources.get("limits") or {}
            requests = {**limits, **(resources.get("requests") or {})}
            for name in (GPU_RESOURCE, "cpu", "memory"):
                if name not in requests:
                    continue
                amount = quantity(requests[name], where=f"{where} {kind} {name}")
                if into is totals:
                    into[name] = into.get(name, Decimal(0)) + amount
                else:
                    into[name] = max(into.get(name, Decimal(0)), amount)
    effective = {
        name: max(totals.get(name, Decimal(0)), init_max.get(name, Decimal(0)))
        for name in (GPU_RESOURCE, "cpu", "memory")
    }
    gpus = effective[GPU_RESOURCE]
    if gpus <= 0 or gpus != gpus.to_integral_value():
        raise NoGpuRequest(
            f"{where}: its pod template requests no whole number of nvidia.com/gpu "
            f"({gpus}), so placeholders cannot be shaped like its replicas and the pool's shape "
            "holds its GPUs; set resources.limits['nvidia.com/gpu'] on its serving container"
        )
    return PodShape(
        gpus=int(gpus),
        cpu=effective["cpu"],
        memory=effective["memory"],
        tolerations=tuple(template.get("tolerations") or ()),
        node_selector=dict(template.get("nodeSelector") or {}),
        affinity=template.get("affinity") or None,
        topology_spread=tuple(template.get("topologySpreadConstraints") or ()),
    )


class Room:
    """What a pool's NodePool limits still allow placeholders to request (unlimited: no limit).

    Per limited resource: the limit minus the capacity of the pool's current nodes. ``nodes``
    (a node count) allows ``nodes left x gpus_per_node // pod GPUs`` pods when the GPUs per node
    are known. A pod counts against every limited resource it requests; placeholders on the
    current nodes' free room are not credited (conservative: never more than the limit).
    """

    def __init__(self, left: Mapping[str, Decimal], gpus_per_node: int | None) -> None:
        self._left = dict(left)
        self._gpus_per_node = gpus_per_node
        self.cut: list[str] = []

    def take(self, shape: PodShape, wanted: int, *, what: str) -> int:
        """The pods of ``shape`` (at most ``wanted``) that fit; takes their room."""
        allowed = wanted
        requests = shape.requests()
        for resource, left in self._left.items():
            if resource == NODES_LIMIT:
                if self._gpus_per_node is None:
                    continue
                per_node = self._gpus_per_node // max(shape.gpus, 1)
                allowed = min(allowed, int(max(left, Decimal(0))) * per_node)
            elif requests.get(resource, Decimal(0)) > 0:
                allowed = min(allowed, int(max(left, Decimal(0)) / requests[resource]))
        allowed = max(allowed, 0)
        for resource in self._left:
            if resource == NODES_LIMIT:
                if self._gpus_per_node:
                    per_node = max(self._gpus_per_node // max(shape.gpus, 1), 1)
                    self._left[resource] -= math.ceil(allowed / per_node)
            else:
                self._left[resource] -= requests.get(resource, Decimal(0)) * allowed
        if allowed < wanted:
            self.cut.append(f"{what}: {allowed} of {wanted} pod(s) (NodePool limits)")
        return allowed


def cpu_text(cores: Decimal) -> str:
    return f"{math.ceil(cores * 1000)}m"


def bytes_text(amount: Decimal) -> str:
    return str(math.ceil(amount))
