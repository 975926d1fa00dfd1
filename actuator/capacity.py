"""Node capacity ahead of demand: placeholder pods per pool, or a Cluster API MachineDeployment.

Owns two ways of turning a :class:`planner.actions.NodeCapacity` into nodes:

- placeholders: Deployments of pause pods in a negative-priority PriorityClass. Unschedulable
  placeholders make the cluster autoscaler or Karpenter add nodes; when real pods arrive the
  scheduler preempts the placeholders (negative priority), so the real pods land on warm nodes at
  once. A node is only warm for a replica if the replica fits on it, so each placeholder pod is
  shaped like one replica (:class:`actuator.placeholder_shapes.PodShape`): copied from the
  model's workload pod template (one Deployment per pool and workload, one pod per replica: a
  4-GPU replica is ONE pod requesting 4 GPUs, so they are held on one node), else the pool's
  configured shape (one Deployment per pool);
- direct scaling of a pool that is a Cluster API MachineDeployment, through its ``/scale``
  subresource, with the original replica count recorded on the object and restored on release
  (:mod:`actuator.machine_deployments`).

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
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from actuator.capacity_result import CapacityResult
from actuator.config import ActuatorConfig
from actuator.floors import workload_resource
from actuator.kube import (
    DEPLOYMENTS,
    MANAGED_SELECTOR,
    NODES,
    KubeClient,
    Obj,
    generation,
    owner_labels,
)
from actuator.kube import Resource as _Resource
from actuator.machine_deployments import MachineDeploymentCapacity
from actuator.names import dns_label
from actuator.nodepools import NODES_LIMIT, NodePoolInfo, NodePoolReader, quantity
from actuator.placeholder_shapes import (
    GPU_RESOURCE,
    NoGpuRequest,
    PodShape,
    Room,
    bytes_text,
    cpu_text,
    pool_shape,
    workload_shape,
)
from common.errors import FailedPrecondition, InvalidInput, NotFound, PrewarmError
from common.ids import PoolName
from planner.actions import NodeCapacity, ReplicaDemand, WorkloadRef

_log = logging.getLogger(__name__)

COMPONENT = "capacity-placeholder"
POOL_LABEL = "prewarm.io/pool"
PLACEHOLDER_LABEL = "prewarm.io/placeholder"
PRIORITY_CLASSES = _Resource("scheduling.k8s.io/v1", "priorityclasses", namespaced=False)


@dataclass(frozen=True, slots=True)
class Placement:
    """One placeholder Deployment: ``replicas`` pods of ``shape``."""

    name: str
    shape: PodShape
    replicas: int
    workload: WorkloadRef | None = None


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
                except NoGpuRequest as error:
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
                            "cpu": cpu_text(shape.cpu),
                            "memory": bytes_text(shape.memory),
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
            changed |= before is None or generation(before) != generation(after)
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
