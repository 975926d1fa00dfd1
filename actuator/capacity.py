"""Node capacity ahead of demand: placeholder pods per pool, or a Cluster API MachineDeployment.

Owns two ways of turning a :class:`planner.actions.NodeCapacity` into nodes:

- placeholders: one Deployment per pool of pause pods that request GPUs, carry the pool's node
  selector and a negative-priority PriorityClass. Unschedulable placeholders make the cluster
  autoscaler or Karpenter add nodes; when real pods arrive the scheduler preempts the placeholders
  (negative priority), so the real pods land on warm nodes at once;
- direct scaling of a pool that is a Cluster API MachineDeployment, through its ``/scale``
  subresource, with the original replica count recorded on the object and restored on release.

Must not: touch any object it did not create, except the configured MachineDeployments (and there
only ``/scale`` plus prewarm's own annotations); decide sizes (the plan does).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actuator.config import ActuatorConfig, MachineDeploymentRef
from actuator.kube import DEPLOYMENTS, MANAGED_SELECTOR, Conflict, KubeClient, Obj, owner_labels
from actuator.kube import Resource as _Resource
from actuator.names import dns_label
from common.errors import FailedPrecondition, PrewarmError
from common.ids import PoolName
from planner.actions import NodeCapacity

_log = logging.getLogger(__name__)

COMPONENT = "capacity-placeholder"
POOL_LABEL = "prewarm.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
ORIGINAL_REPLICAS = "prewarm.io/original-replicas"
SET_REPLICAS = "prewarm.io/set-replicas"
_CONFLICT_RETRIES = 5


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """What one capacity operation did. ``changed`` is False when the cluster already matched."""

    pool: PoolName
    target: str
    replicas: int
    changed: bool
    dry_run: bool
    error: PrewarmError | None = None


class PlaceholderCapacity:
    """Placeholder Deployments, one per pool, in ``config.namespace``."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config

    def name(self, pool: PoolName) -> str:
        """The placeholder Deployment's name for ``pool`` (deterministic)."""
        return dns_label("prewarm-placeholder", pool)

    def replicas(self, action: NodeCapacity) -> int:
        """Placeholder pods needed to hold ``action.gpus`` GPUs."""
        return math.ceil(max(action.gpus, 0) / self._config.placeholder.gpus_per_pod)

    def manifest(self, action: NodeCapacity) -> Obj:
        """The Deployment prewarm applies for ``action`` (pure)."""
        placeholder = self._config.placeholder
        gpus = str(placeholder.gpus_per_pod)
        selector = {"app.kubernetes.io/name": "prewarm-placeholder", POOL_LABEL: action.pool}
        labels = {**owner_labels(COMPONENT), **selector}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self.name(action.pool),
                "namespace": self._config.namespace,
                "labels": labels,
                "annotations": {"prewarm.io/reason": action.reason[:1000]},
            },
            "spec": {
                "replicas": self.replicas(action),
                "selector": {"matchLabels": selector},
                # Recreate: a rolling update would briefly double the held GPUs.
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "priorityClassName": placeholder.priority_class,
                        # Preempted placeholders should vanish at once to free the GPUs.
                        "terminationGracePeriodSeconds": 0,
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "nodeSelector": {self._config.pool_label: action.pool},
                        # GPU pools are usually tainted so that only GPU pods land there.
                        "tolerations": [
                            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [
                            {
                                "name": "pause",
                                "image": placeholder.image,
                                # Extended resources (GPUs) must have limits equal to requests.
                                "resources": {
                                    "requests": {
                                        GPU_RESOURCE: gpus,
                                        "cpu": placeholder.cpu_request,
                                        "memory": placeholder.memory_request,
                                    },
                                    "limits": {GPU_RESOURCE: gpus},
                                },
                            }
                        ],
                    },
                },
            },
        }

    def apply(self, action: NodeCapacity, *, dry_run: bool = False) -> CapacityResult:
        """Make the pool's placeholder Deployment match ``action`` (server-side apply)."""
        dry_run = dry_run or self._config.dry_run
        manifest = self.manifest(action)
        path = DEPLOYMENTS.path(self._config.namespace, manifest["metadata"]["name"])
        before = self._kube.get(path)
        after = self._kube.apply(
            path, manifest, field_manager=self._config.field_manager, dry_run=dry_run
        )
        changed = before is None or _generation(before) != _generation(after)
        return CapacityResult(
            pool=action.pool,
            target=f"deployment/{manifest['metadata']['name']}",
            replicas=manifest["spec"]["replicas"],
            changed=changed,
            dry_run=dry_run,
        )

    def release(self, pool: PoolName, *, dry_run: bool = False) -> bool:
        """Delete ``pool``'s placeholders (the cleanup path); False when there were none."""
        dry_run = dry_run or self._config.dry_run
        path = DEPLOYMENTS.path(self._config.namespace, self.name(pool))
        return self._kube.delete(path, dry_run=dry_run)

    def pools(self) -> set[PoolName]:
        """Pools that currently have a placeholder Deployment."""
        selector = f"{MANAGED_SELECTOR},app.kubernetes.io/component={COMPONENT}"
        items = self._kube.list(DEPLOYMENTS.path(self._config.namespace), label_selector=selector)
        return {PoolName(item["metadata"]["labels"][POOL_LABEL]) for item in items}


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
        self._config = config
        self.placeholders = PlaceholderCapacity(kube, config)
        self.machine_deployments = MachineDeploymentCapacity(kube, config)

    def reconcile(
        self, actions: Sequence[NodeCapacity], *, dry_run: bool = False
    ) -> list[CapacityResult]:
        """Apply ``actions`` (one per pool; the largest wins) and release every pool not in them.

        A failure on one pool is that pool's ``error`` and never stops the others.
        """
        wanted: dict[PoolName, NodeCapacity] = {}
        for action in actions:
            if action.gpus > 0 and (
                action.pool not in wanted or action.gpus > wanted[action.pool].gpus
            ):
                wanted[action.pool] = action
        results: list[CapacityResult] = []
        for pool, action in sorted(wanted.items()):
            ref = self._config.pool(pool).machine_deployment
            try:
                if ref is None:
                    results.append(self.placeholders.apply(action, dry_run=dry_run))
                elif self.machine_deployments.available(ref):
                    results.append(self.machine_deployments.apply(action, ref, dry_run=dry_run))
            except PrewarmError as error:
                dry = dry_run or self._config.dry_run
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


def _md(ref: MachineDeploymentRef) -> _Resource:
    return _Resource(ref.api_version, "machinedeployments")


def _generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)
