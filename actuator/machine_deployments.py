"""Node pools that are Cluster API MachineDeployments, scaled directly through ``/scale``.

Owns :class:`MachineDeploymentCapacity`: the replica count before prewarm's first change is
recorded on the object and restored on release. Must not touch anything but the configured
MachineDeployments' ``/scale`` and prewarm's own annotations on them.
"""

from __future__ import annotations

import logging
import math

from actuator.capacity_result import CapacityResult
from actuator.config import ActuatorConfig, MachineDeploymentRef
from actuator.kube import Conflict, KubeClient, Obj
from actuator.kube import Resource as _Resource
from common.errors import FailedPrecondition
from common.ids import PoolName
from planner.actions import NodeCapacity

_log = logging.getLogger(__name__)

ORIGINAL_REPLICAS = "prewarm.io/original-replicas"
SET_REPLICAS = "prewarm.io/set-replicas"
_CONFLICT_RETRIES = 5


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


def _md(ref: MachineDeploymentRef) -> _Resource:
    return _Resource(ref.api_version, "machinedeployments")
