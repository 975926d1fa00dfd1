"""Node capacity ahead of demand: placeholder pods per pool, or a Cluster API MachineDeployment.

Owns two ways of turning a :class:`planner.actions.NodeCapacity` into nodes:

- placeholders: Deployments of pause pods in a negative-priority PriorityClass. Unschedulable
  placeholders make the cluster autoscaler or Karpenter add nodes; when real pods arrive the
  scheduler preempts the placeholders (negative priority), so the real pods land on warm nodes at
  once. A node is only warm for a replica if the replica fits on it, so each placeholder pod is
  shaped like one replica (:class:`PodShape`): copied from the model's workload pod template (one
  Deployment per pool and workload, one pod per replica: a 4-GPU replica is ONE pod requesting 4
  GPUs, so they are held on one node), else the pool's configured shape (one Deployment per pool);
- direct scaling of a pool that is a Cluster API MachineDeployment, through its ``/scale``
  subresource, with the original replica count recorded on the object and restored on release.

Before placing placeholders it checks their PriorityClass
(:meth:`NodeCapacityActuator.priority_class_problem`): it must exist, be negative (else real pods
do not preempt them) and not lie below the cluster autoscaler's
``--expendable-pods-priority-cutoff`` (cluster-autoscaler's ``IsExpendablePod`` is
``priority < cutoff``: such pending pods never trigger a scale-up; Karpenter's
``IsProvisionable`` looks at no priority). And it respects a Karpenter NodePool's ``spec.limits``
(:mod:`actuator.nodepools`): the placeholders of a pool never request more of a limited resource
than the limit minus the capacity of the pool's current nodes (what new nodes may still add).

Must not: touch any object it did not create, except the configured MachineDeployments (and there
only ``/scale`` plus prewarm's own annotations); decide sizes (the plan does).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from actuator.config import ActuatorConfig, MachineDeploymentRef
from actuator.floors import workload_resource
from actuator.kube import (
    DEPLOYMENTS,
    MANAGED_SELECTOR,
    NODES,
    Conflict,
    KubeClient,
    Obj,
    owner_labels,
)
from actuator.kube import Resource as _Resource
from actuator.names import dns_label
from actuator.nodepools import NODES_LIMIT, NodePoolInfo, NodePoolReader, quantity
from common.errors import FailedPrecondition, InvalidInput, NotFound, PrewarmError
from common.ids import PoolName
from planner.actions import NodeCapacity, ReplicaDemand, WorkloadRef

_log = logging.getLogger(__name__)

COMPONENT = "capacity-placeholder"
POOL_LABEL = "prewarm.io/pool"
PLACEHOLDER_LABEL = "prewarm.io/placeholder"
GPU_RESOURCE = "nvidia.com/gpu"
ORIGINAL_REPLICAS = "prewarm.io/original-replicas"
SET_REPLICAS = "prewarm.io/set-replicas"
PRIORITY_CLASSES = _Resource("scheduling.k8s.io/v1", "priorityclasses", namespaced=False)
_CONFLICT_RETRIES = 5
_GPU_TOLERATION: Obj = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """What one capacity operation did. ``changed`` is False when the cluster already matched.

    ``replicas`` is the placeholder pods (or MachineDeployment replicas) now asked for; ``error``
    names what could not be held (other parts of the pool may still be held); ``notes`` what was
    held otherwise than asked (NodePool limits cut it, a pool shape stood in for a workload's).
    """

    pool: PoolName
    target: str
    replicas: int
    changed: bool
    dry_run: bool
    error: PrewarmError | None = None
    notes: str = ""


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
    tolerations = own.tolerations if own.tolerations is not None else [_GPU_TOLERATION]
    return PodShape(
        gpus=own.gpus_per_pod or base.gpus_per_pod,
        cpu=quantity(own.cpu_request or base.cpu_request, where=f"pool {pool} cpu_request"),
        memory=quantity(
            own.memory_request or base.memory_request, where=f"pool {pool} memory_request"
        ),
        tolerations=tuple(tolerations),
        node_selector=dict(own.node_selector),
    )


class _NoGpuRequest(InvalidInput):
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
        raise _NoGpuRequest(
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


@dataclass(frozen=True, slots=True)
class Placement:
    """One placeholder Deployment: ``replicas`` pods of ``shape``."""

    name: str
    shape: PodShape
    replicas: int
    workload: WorkloadRef | None = None


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


class PlaceholderCapacity:
    """Placeholder Deployments in ``config.namespace``: per pool, one per workload they are
    shaped from, and one (``prewarm-placeholder-<pool>``) in the pool's own shape."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config
        self._warned: set[str] = set()

    def name(self, pool: PoolName) -> str:
        """The pool-shaped placeholder Deployment's name for ``pool`` (deterministic)."""
        return dns_label("prewarm-placeholder", pool)

    def workload_name(self, pool: PoolName, workload: WorkloadRef) -> str:
        """The name of ``pool``'s placeholders shaped from ``workload`` (deterministic)."""
        key = f"{pool}/{workload.kind}/{workload.namespace}/{workload.name}"
        return dns_label("prewarm-placeholder", f"{pool}-{workload.name}", key=key)

    def replicas(self, action: NodeCapacity) -> int:
        """Pool-shaped placeholder pods needed to hold ``action.gpus`` GPUs."""
        gpus = self._config.pool(action.pool).placeholder.gpus_per_pod
        per_pod = gpus or self._config.placeholder.gpus_per_pod
        return math.ceil(max(action.gpus, 0) / per_pod)

    def placements(
        self,
        action: NodeCapacity,
        *,
        node_pool: NodePoolInfo | None = None,
        room: Room | None = None,
    ) -> tuple[list[Placement], list[str], list[str]]:
        """The Deployments that hold ``action``, the problems that left some of it unheld
        (errors) and notes (what was held otherwise than asked).

        With demands (and ``shape_from_workload``): per demand in order, its replicas while the
        action's GPUs last (a budget may have clipped them), one pod per replica shaped from its
        workload. A workload whose template requests no GPU is a note: its GPUs are held by the
        pool-shaped Deployment, as without demands. A workload that cannot be read is a problem:
        its Deployment (if any) is kept as it is. ``room`` (NodePool limits) cuts pods in order.
        """
        pool = action.pool
        problems: list[str] = []
        notes: list[str] = []
        found: dict[str, Placement] = {}
        pool_gpus = max(action.gpus, 0)
        if action.demands and self._config.placeholder.shape_from_workload:
            pool_gpus = 0
            budget = max(action.gpus, 0)
            for demand in action.demands:
                per_replica = max(demand.gpus_per_replica, 1)
                wanted = min(demand.replicas, budget // per_replica)
                budget -= wanted * per_replica
                name = self.workload_name(pool, demand.workload)
                try:
                    shape = self._shape(demand)
                except _NoGpuRequest as error:
                    notes.append(f"{demand.model}: {error}")
                    self._warn_once(str(error))
                    pool_gpus += wanted * per_replica
                    continue
                except PrewarmError as error:
                    problems.append(f"{demand.model}: {error}")
                    found.setdefault(name, Placement(name, _UNKNOWN, -1, demand.workload))
                    continue
                before = found.get(name)
                if before is not None and before.replicas >= 0:
                    wanted += before.replicas
                found[name] = Placement(name, shape, wanted, demand.workload)
        if pool_gpus > 0 or not (action.demands and self._config.placeholder.shape_from_workload):
            shape = pool_shape(self._config, pool)
            name = self.name(pool)
            found[name] = Placement(name, shape, math.ceil(pool_gpus / max(shape.gpus, 1)))
        gpus_per_node = self.gpus_per_node(pool, node_pool)
        placements: list[Placement] = []
        for placement in found.values():
            replicas = placement.replicas
            if replicas > 0 and gpus_per_node is not None and placement.shape.gpus > gpus_per_node:
                problems.append(
                    f"{placement.name}: one replica needs {placement.shape.gpus} GPUs on one node "
                    f"but nodes of pool {pool} have {gpus_per_node}; fix the workload or "
                    f"actuator.pools.{pool}.gpus_per_node"
                )
                replicas = 0
            if replicas > 0 and room is not None:
                replicas = room.take(placement.shape, replicas, what=placement.name)
            placements.append(
                Placement(placement.name, placement.shape, replicas, placement.workload)
            )
        if room is not None:
            notes += room.cut
        return placements, problems, notes

    def manifest(self, action: NodeCapacity) -> Obj:
        """The pool-shaped Deployment prewarm applies for ``action`` without demands (pure)."""
        shape = pool_shape(self._config, action.pool)
        return self._manifest(
            Placement(self.name(action.pool), shape, self.replicas(action)), action
        )

    def _manifest(self, placement: Placement, action: NodeCapacity) -> Obj:
        placeholder = self._config.placeholder
        shape = placement.shape
        gpus = str(shape.gpus)
        # A Deployment's selector is immutable and must not overlap another's (their controllers
        # would fight over the pods): the pool-shaped one keeps the selector it always had; the
        # workload-shaped ones carry another name and their own Deployment's name.
        if placement.workload is None:
            selector = {"app.kubernetes.io/name": "prewarm-placeholder", POOL_LABEL: action.pool}
        else:
            selector = {
                "app.kubernetes.io/name": "prewarm-placeholder-replica",
                POOL_LABEL: action.pool,
                PLACEHOLDER_LABEL: placement.name,
            }
        labels = {**owner_labels(COMPONENT), **selector}
        # The pool label last: a template that selects another pool cannot move the placeholder.
        node_selector = {**shape.node_selector, self._config.pool_label: action.pool}
        pod: Obj = {
            "priorityClassName": placeholder.priority_class,
            # Preempted placeholders should vanish at once to free the GPUs.
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "nodeSelector": node_selector,
            # GPU pools are usually tainted so that only GPU pods land there.
            "tolerations": [dict(t) for t in shape.tolerations],
            "containers": [
                {
                    "name": "pause",
                    "image": placeholder.image,
                    # Extended resources (GPUs) must have limits equal to requests.
                    "resources": {
                        "requests": {
                            GPU_RESOURCE: gpus,
                            "cpu": _cpu(shape.cpu),
                            "memory": _bytes(shape.memory),
                        },
                        "limits": {GPU_RESOURCE: gpus},
                    },
                }
            ],
        }
        if shape.affinity:
            pod["affinity"] = shape.affinity
        if shape.topology_spread:
            pod["topologySpreadConstraints"] = [dict(t) for t in shape.topology_spread]
        annotations = {"prewarm.io/reason": action.reason[:1000]}
        if placement.workload is not None:
            ref = placement.workload
            annotations["prewarm.io/shaped-from"] = f"{ref.kind}/{ref.namespace}/{ref.name}"
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": placement.name,
                "namespace": self._config.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": {
                "replicas": placement.replicas,
                "selector": {"matchLabels": selector},
                # Recreate: a rolling update would briefly double the held GPUs.
                "strategy": {"type": "Recreate"},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        }

    def apply(
        self,
        action: NodeCapacity,
        *,
        dry_run: bool = False,
        node_pool: NodePoolInfo | None = None,
        room: Room | None = None,
    ) -> CapacityResult:
        """Make the pool's placeholder Deployments match ``action`` (server-side apply); delete
        the pool's other placeholder Deployments. One result for the pool: ``error`` lists what
        could not be held."""
        dry_run = dry_run or self._config.dry_run
        placements, problems, notes = self.placements(action, node_pool=node_pool, room=room)
        changed = False
        keep: set[str] = set()
        targets: list[str] = []
        total = 0
        for placement in placements:
            keep.add(placement.name)
            if placement.replicas < 0:
                continue  # its workload could not be read: keep what holds it, change nothing
            if placement.replicas == 0:
                keep.discard(placement.name)
                continue
            manifest = self._manifest(placement, action)
            path = DEPLOYMENTS.path(self._config.namespace, placement.name)
            before = self._kube.get(path)
            after = self._kube.apply(
                path, manifest, field_manager=self._config.field_manager, dry_run=dry_run
            )
            changed |= before is None or _generation(before) != _generation(after)
            targets.append(f"deployment/{placement.name}")
            total += placement.replicas
        for name in sorted(self._deployments(action.pool) - keep):
            changed |= self._kube.delete(
                DEPLOYMENTS.path(self._config.namespace, name), dry_run=dry_run
            )
        return CapacityResult(
            pool=action.pool,
            target=",".join(targets),
            replicas=total,
            changed=changed,
            dry_run=dry_run,
            error=InvalidInput("; ".join(problems)) if problems else None,
            notes="; ".join(notes),
        )

    def release(self, pool: PoolName, *, dry_run: bool = False) -> bool:
        """Delete ``pool``'s placeholders (the cleanup path); False when there were none."""
        dry_run = dry_run or self._config.dry_run
        deleted = False
        for name in sorted(self._deployments(pool) | {self.name(pool)}):
            path = DEPLOYMENTS.path(self._config.namespace, name)
            deleted |= self._kube.delete(path, dry_run=dry_run)
        return deleted

    def pools(self) -> set[PoolName]:
        """Pools that currently have a placeholder Deployment."""
        return {PoolName(item["metadata"]["labels"][POOL_LABEL]) for item in self._list()}

    def _deployments(self, pool: PoolName) -> set[str]:
        return {
            str(item["metadata"]["name"])
            for item in self._list()
            if item["metadata"]["labels"].get(POOL_LABEL) == pool
        }

    def _list(self) -> list[Obj]:
        selector = f"{MANAGED_SELECTOR},app.kubernetes.io/component={COMPONENT}"
        return self._kube.list(DEPLOYMENTS.path(self._config.namespace), label_selector=selector)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            _log.warning("capacity placeholders: %s", message)

    def _shape(self, demand: ReplicaDemand) -> PodShape:
        ref = demand.workload
        workload = self._kube.get(workload_resource(ref).path(ref.namespace, ref.name))
        if workload is None:
            raise NotFound(
                f"{ref.kind} {ref.namespace}/{ref.name} does not exist, so its placeholders "
                "cannot be shaped like its replicas; fix the model's workload in the catalog"
            )
        return workload_shape(workload, ref)

    def gpus_per_node(self, pool: PoolName, node_pool: NodePoolInfo | None) -> int | None:
        """GPUs per node of ``pool`` when known: set in the config, else from its NodePool."""
        config = self._config.pools.get(pool)
        if config is not None and "gpus_per_node" in config.model_fields_set:
            return config.gpus_per_node
        return node_pool.gpus_per_node if node_pool is not None else None


_UNKNOWN = PodShape(gpus=0, cpu=Decimal(0), memory=Decimal(0))
"""The shape of a placement whose workload could not be read (never applied)."""


def _cpu(cores: Decimal) -> str:
    return f"{math.ceil(cores * 1000)}m"


def _bytes(amount: Decimal) -> str:
    return str(math.ceil(amount))


class MachineDeploymentCapacity:
    """Direct scaling of pools that are Cluster API MachineDeployments (``/scale``).

    The replica count before prewarm's first change is recorded in the annotation
    ``prewarm.io/original-replicas`` *before* scaling, so a crash between the two writes leaves a
    record and an unchanged count, never a raised count without a record.
    """

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config
        self._served: dict[str, bool] = {}

    def available(self, ref: MachineDeploymentRef) -> bool:
        """Whether the MachineDeployment API is served; warns once per apiVersion when it is not."""
        if ref.api_version not in self._served:
            served = self._kube.served(ref.api_version)
            self._served[ref.api_version] = served
            if not served:
                _log.warning(
                    "%s is not served (Cluster API not installed): direct pool scaling disabled",
                    ref.api_version,
                )
        return self._served[ref.api_version]

    def apply(
        self, action: NodeCapacity, ref: MachineDeploymentRef, *, dry_run: bool = False
    ) -> CapacityResult:
        """Scale ``ref`` to its original replicas plus the nodes ``action.gpus`` needs."""
        dry_run = dry_run or self._config.dry_run
        extra = math.ceil(max(action.gpus, 0) / self._config.pool(action.pool).gpus_per_node)
        path = _md(ref).path(ref.namespace, ref.name)
        for _ in range(_CONFLICT_RETRIES):
            current = self._get(path, ref)
            annotations = current["metadata"].get("annotations") or {}
            replicas = int(current["spec"].get("replicas") or 0)
            if ORIGINAL_REPLICAS in annotations:
                original = int(annotations[ORIGINAL_REPLICAS])
            else:
                original = replicas
            target = original + extra
            if annotations.get(SET_REPLICAS) != str(replicas):
                # Someone else (an operator, the cluster autoscaler) set the count: never lower it.
                target = max(target, replicas)
            if replicas == target and ORIGINAL_REPLICAS in annotations:
                return self._result(
                    action.pool, ref, replicas=target, changed=False, dry_run=dry_run
                )
            try:
                # 1. Record the original (and what we set) with a resourceVersion precondition.
                updated = self._kube.merge_patch(
                    path,
                    {
                        "metadata": {
                            "annotations": {
                                ORIGINAL_REPLICAS: str(original),
                                SET_REPLICAS: str(target),
                            }
                        }
                    },
                    field_manager=self._config.field_manager,
                    dry_run=dry_run,
                    resource_version=current["metadata"]["resourceVersion"],
                )
                # 2. Then scale through the subresource (what the RBAC grants on MDs), only if
                # nobody changed the object since the record (/scale shares its resourceVersion).
                self._kube.merge_patch(
                    path + "/scale",
                    {"spec": {"replicas": target}},
                    field_manager=self._config.field_manager,
                    dry_run=dry_run,
                    resource_version=None if dry_run else updated["metadata"]["resourceVersion"],
                )
            except Conflict:
                continue
            return self._result(action.pool, ref, replicas=target, changed=True, dry_run=dry_run)
        raise FailedPrecondition(f"{ref.namespace}/{ref.name} kept changing; retry next tick")

    def restore(self, ref: MachineDeploymentRef, *, dry_run: bool = False) -> bool:
        """Put ``ref`` back to its recorded original count and drop the record (cleanup path).

        If someone else changed the count since prewarm set it, their value is kept. Returns
        False when there was nothing to restore.
        """
        dry_run = dry_run or self._config.dry_run
        path = _md(ref).path(ref.namespace, ref.name)
        current = self._kube.get(path)
        if current is None:
            return False
        annotations = current["metadata"].get("annotations") or {}
        if ORIGINAL_REPLICAS not in annotations:
            return False
        replicas = int(current["spec"].get("replicas") or 0)
        if str(replicas) == annotations.get(SET_REPLICAS):
            self._kube.merge_patch(
                path + "/scale",
                {"spec": {"replicas": int(annotations[ORIGINAL_REPLICAS])}},
                field_manager=self._config.field_manager,
                dry_run=dry_run,
            )
        # The record goes last: a crash before this line restores again next time (idempotent).
        self._kube.merge_patch(
            path,
            {"metadata": {"annotations": {ORIGINAL_REPLICAS: None, SET_REPLICAS: None}}},
            field_manager=self._config.field_manager,
            dry_run=dry_run,
        )
        return True

    def _get(self, path: str, ref: MachineDeploymentRef) -> Obj:
        current = self._kube.get(path)
        if current is None:
            raise FailedPrecondition(
                f"MachineDeployment {ref.namespace}/{ref.name} does not exist; fix "
                "actuator.pools.<pool>.machine_deployment"
            )
        return current

    @staticmethod
    def _result(
        pool: PoolName, ref: MachineDeploymentRef, *, replicas: int, changed: bool, dry_run: bool
    ) -> CapacityResult:
        return CapacityResult(
            pool=pool,
            target=f"machinedeployment/{ref.namespace}/{ref.name}",
            replicas=replicas,
            changed=changed,
            dry_run=dry_run,
        )


class NodeCapacityActuator:
    """Applies every :class:`NodeCapacity` of a plan and releases capacity no longer planned."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config
        self.placeholders = PlaceholderCapacity(kube, config)
        self.machine_deployments = MachineDeploymentCapacity(kube, config)
        self.node_pools = NodePoolReader(kube, config)
        self._logged_problem: str | None = None

    def priority_class_problem(self) -> str | None:
        """What is wrong with the placeholders' PriorityClass, or None when it is fine.

        It must exist (the API server refuses pods naming a missing class), be negative (else
        real pods at the default priority 0 do not preempt the placeholders) and be at least
        ``placeholder.expendable_priority_cutoff`` (the cluster autoscaler never adds a node for
        a pending pod whose priority is below its cut-off). Raises the client's errors (403).
        """
        return self._priority_class()[0]

    def check_at_start(self) -> str | None:
        """The daemon's start-up check of the PriorityClass: logs a problem as an error (or why
        it could not check, as a warning) and returns it; never raises."""
        try:
            problem = self.priority_class_problem()
        except PrewarmError as error:
            _log.warning("could not check the placeholders' PriorityClass: %s", error)
            return None
        if problem is not None:
            _log.error("capacity placeholders: %s", problem)
            self._logged_problem = problem
        return problem

    def _priority_class(self) -> tuple[str | None, bool]:
        """(:meth:`priority_class_problem`, whether the problem is that the class is missing).

        A missing class does not stop placeholders: their Deployments are valid, and the
        ReplicaSet controller creates their pods once the class exists (e.g. applied by the same
        ``helm install``). A class with a wrong value does: its pods would never do their job.
        """
        placeholder = self._config.placeholder
        name = placeholder.priority_class
        found = self._kube.get(PRIORITY_CLASSES.path(None, name))
        cutoff = placeholder.expendable_priority_cutoff
        if found is None:
            return (
                f"PriorityClass {name} does not exist, so the API server refuses placeholder "
                "pods until it does; create it (the chart's placeholder.createPriorityClass) or "
                "set actuator.placeholder.priority_class to an existing negative class"
            ), True
        value = int(found.get("value") or 0)
        if value >= 0:
            return (
                f"PriorityClass {name} has value {value}: real pods (priority 0) would not "
                f"preempt the placeholders; give it a value in [{cutoff}, -1]"
            ), False
        if value < cutoff:
            return (
                f"PriorityClass {name} has value {value}, below the cluster autoscaler's "
                f"--expendable-pods-priority-cutoff {cutoff} "
                "(actuator.placeholder.expendable_priority_cutoff): it treats the placeholders "
                f"as expendable and adds no node for them; give it a value in [{cutoff}, -1]"
            ), False
        return None, False

    def reconcile(
        self, actions: Sequence[NodeCapacity], *, dry_run: bool = False
    ) -> list[CapacityResult]:
        """Apply ``actions`` (one per pool; the largest wins) and release every pool not in them.

        A failure on one pool is that pool's ``error`` and never stops the others. Placeholder
        pools wait (their existing placeholders stay) while the PriorityClass is unusable or
        their NodePool's limits are unreadable.
        """
        wanted: dict[PoolName, NodeCapacity] = {}
        for action in actions:
            if action.gpus > 0 and (
                action.pool not in wanted or action.gpus > wanted[action.pool].gpus
            ):
                wanted[action.pool] = action
        dry = dry_run or self._config.dry_run
        results: list[CapacityResult] = []
        placeholder_pools = [
            pool for pool in wanted if self._config.pool(pool).machine_deployment is None
        ]
        blocked: PrewarmError | None = None
        node_pools: dict[PoolName, NodePoolInfo] = {}
        if placeholder_pools:
            try:
                problem, missing = self._priority_class()
                if problem is not None and not missing:
                    blocked = FailedPrecondition(problem)
                if problem is not None and problem != self._logged_problem:
                    _log.error("capacity placeholders: %s", problem)
                self._logged_problem = problem
                node_pools = self.node_pools.read()
            except PrewarmError as error:
                blocked = error
        for pool, action in sorted(wanted.items()):
            ref = self._config.pool(pool).machine_deployment
            try:
                if ref is None:
                    if blocked is not None:
                        raise blocked
                    node_pool = node_pools.get(pool)
                    room = self._room(pool, node_pool)
                    results.append(
                        self.placeholders.apply(
                            action, dry_run=dry_run, node_pool=node_pool, room=room
                        )
                    )
                elif self.machine_deployments.available(ref):
                    results.append(self.machine_deployments.apply(action, ref, dry_run=dry_run))
            except PrewarmError as error:
                results.append(CapacityResult(pool, "", 0, False, dry, error))
        for pool in sorted(self.placeholders.pools() - set(wanted)):
            self.placeholders.release(pool, dry_run=dry_run)
        for pool_name, pool_config in sorted(self._config.pools.items()):
            ref = pool_config.machine_deployment
            if ref is None or pool_name in wanted:
                continue
            if self.machine_deployments.available(ref):
                self.machine_deployments.restore(ref, dry_run=dry_run)
        return results

    def _room(self, pool: PoolName, node_pool: NodePoolInfo | None) -> Room | None:
        """What ``pool``'s NodePool limits leave to placeholders (None: no NodePool, no limits).

        Raises :class:`InvalidInput` for a NodePool whose limits cannot be read."""
        if node_pool is None:
            return None
        if node_pool.problem is not None:
            raise InvalidInput(node_pool.problem)
        if not node_pool.limits:
            return None
        nodes = self._kube.list(NODES.path(), label_selector=f"{self._config.pool_label}={pool}")
        left: dict[str, Decimal] = {}
        for resource, limit in node_pool.limits.items():
            if resource == NODES_LIMIT:
                left[resource] = limit - len(nodes)
                continue
            used = Decimal(0)
            for node in nodes:
                capacity = (node.get("status") or {}).get("capacity") or {}
                if resource in capacity:
                    used += quantity(capacity[resource], where=f"node capacity {resource}")
            left[resource] = limit - used
        return Room(left, self.placeholders.gpus_per_node(pool, node_pool))


def _md(ref: MachineDeploymentRef) -> _Resource:
    return _Resource(ref.api_version, "machinedeployments")


def _generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)
