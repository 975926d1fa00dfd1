"""Replica floors: keep at least N replicas of a model's workload until the floor expires.

Owns choosing *where* a floor is written, never fighting the autoscaler that owns the workload:

- a KEDA ScaledObject targets it -> the ScaledObject's ``spec.minReplicaCount`` (KEDA owns the HPA
  it generates and would overwrite any change made there);
- else an HPA targets it -> the HPA's ``spec.minReplicas`` (never ``/scale``: the HPA would undo it,
  and a fight between two controllers flaps the replica count);
- else -> the workload's ``/scale`` subresource.

The value before prewarm's first change is recorded on the same object in
``prewarm.io/original-min-replicas`` (HPA, ScaledObject) or ``prewarm.io/original-replicas``
(``/scale``), with ``prewarm.io/set-replicas`` (what prewarm wrote) and the label
``prewarm.io/floor=active`` so expired floors can be found. For HPA and ScaledObject record and
raise are ONE write; for ``/scale`` the record is written first. Either way there is never a raised
floor without a recorded original. When someone else changes the value while a floor stands, their
value becomes the recorded original (the operator's last change wins, on every path). On expiry
the original is restored, unless someone else changed the value since prewarm set it (theirs is
kept); then the record is removed.

Must not: lower a value someone else raised, or write to a workload another autoscaler owns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from actuator.config import ActuatorConfig
from actuator.kube import DEPLOYMENTS, HPAS, SCALED_OBJECTS, Conflict, KubeClient, Obj, Resource
from common.errors import FailedPrecondition, NotFound, PrewarmError
from planner.actions import ReplicaFloor, WorkloadRef

_log = logging.getLogger(__name__)

ORIGINAL_MIN = "prewarm.io/original-min-replicas"
ORIGINAL_REPLICAS = "prewarm.io/original-replicas"
SET_REPLICAS = "prewarm.io/set-replicas"
FLOOR_UNTIL = "prewarm.io/floor-until"
FLOOR_LABEL = "prewarm.io/floor"
UNSET = "unset"
_CONFLICT_RETRIES = 5

Via = Literal["scaledobject", "hpa", "scale"]


@dataclass(frozen=True, slots=True)
class FloorResult:
    """What one floor operation did. ``via`` names the object written; ``target`` its path."""

    workload: WorkloadRef
    via: Via
    target: str
    value: int
    changed: bool
    dry_run: bool
    error: PrewarmError | None = None


@dataclass(frozen=True, slots=True)
class _Owner:
    via: Via
    resource: Resource
    namespace: str
    name: str
    field: str  # the spec field that holds the floor ("minReplicaCount", "minReplicas", "replicas")

    @property
    def path(self) -> str:
        return self.resource.path(self.namespace, self.name)

    @property
    def original_key(self) -> str:
        return ORIGINAL_REPLICAS if self.via == "scale" else ORIGINAL_MIN


def _workload_resource(workload: WorkloadRef) -> Resource:
    plural = {"Deployment": "deployments", "StatefulSet": "statefulsets"}.get(workload.kind)
    if plural is None:
        plural = workload.kind.lower() + "s"
    return Resource(workload.api_version, plural)


def scale_target_matches(scale_target: Obj, workload: WorkloadRef) -> bool:
    # scaleTargetRef.apiVersion is optional in ScaledObjects (default apps/v1) and in HPAs it is
    # group/version; compare the group only, since a workload is the same across versions.
    kind = scale_target.get("kind") or "Deployment"
    group = str(scale_target.get("apiVersion") or "apps/v1").rpartition("/")[0]
    return (
        scale_target.get("name") == workload.name
        and kind == workload.kind
        and group == workload.api_version.rpartition("/")[0]
    )


class ReplicaFloors:
    """Raises and restores replica floors. KEDA support is on when its CRD is served."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config
        self._keda: bool | None = None

    def keda_enabled(self) -> bool:
        """Whether ScaledObjects are served; one warning the first time they are not."""
        if self._keda is None:
            self._keda = self._kube.served(SCALED_OBJECTS.api_version)
            if not self._keda:
                _log.warning(
                    "keda.sh/v1alpha1 is not served (KEDA not installed): floors on KEDA "
                    "ScaledObjects disabled; HPA and /scale floors still work"
                )
        return self._keda

    def owner(self, workload: WorkloadRef) -> _Owner:
        """Where ``workload``'s floor is written (see the module docstring for the order)."""
        ns = workload.namespace
        if self.keda_enabled():
            for item in self._kube.list(SCALED_OBJECTS.path(ns)):
                if scale_target_matches(item["spec"].get("scaleTargetRef") or {}, workload):
                    name = item["metadata"]["name"]
                    return _Owner("scaledobject", SCALED_OBJECTS, ns, name, "minReplicaCount")
        for item in self._kube.list(HPAS.path(ns)):
            owners = item["metadata"].get("ownerReferences") or []
            if any(ref.get("kind") == "ScaledObject" for ref in owners):
                continue  # KEDA's own HPA: the ScaledObject is the place to write.
            if scale_target_matches(item["spec"].get("scaleTargetRef") or {}, workload):
                return _Owner("hpa", HPAS, ns, item["metadata"]["name"], "minReplicas")
        return _Owner("scale", _workload_resource(workload), ns, workload.name, "replicas")

    def raise_floor(
        self, floor: ReplicaFloor, *, now_s: float, dry_run: bool = False
    ) -> FloorResult:
        """Ensure ``floor.workload`` keeps at least ``floor.min_replicas`` (idempotent).

        A floor that has already expired (``now_s >= floor.until_s``) is restored instead.
        """
        dry_run = dry_run or self._config.dry_run
        if now_s >= floor.until_s:
            self.restore(floor.workload, dry_run=dry_run)
            owner = self.owner(floor.workload)
            return FloorResult(floor.workload, owner.via, owner.path, 0, False, dry_run)
        for _ in range(_CONFLICT_RETRIES):
            owner = self.owner(floor.workload)
            try:
                return self._raise_once(owner, floor, dry_run=dry_run)
            except Conflict:
                continue  # changed under us: re-read and recompute
        raise FailedPrecondition(f"{floor.workload} kept changing; retry next tick")

    def _raise_once(self, owner: _Owner, floor: ReplicaFloor, *, dry_run: bool) -> FloorResult:
        current = self._kube.get(owner.path)
        if current is None:
            raise NotFound(
                f"{owner.via} {owner.namespace}/{owner.name} for model {floor.model} does not "
                "exist; fix the model catalog's workload"
            )
        metadata = current["metadata"]
        annotations = metadata.get("annotations") or {}
        spec = current.get("spec") or {}
        # Unset means the API default: replicas and HPA minReplicas 1, KEDA minReplicaCount 0.
        default = 0 if owner.via == "scaledobject" else 1
        raw = spec.get(owner.field)
        current_value = default if raw is None else int(raw)
        recorded = annotations.get(owner.original_key)
        ours = annotations.get(SET_REPLICAS) == str(current_value)
        if recorded is None or not ours:
            # No record yet, or someone changed the value since prewarm set it: the operator's
            # last change is what the restore puts back.
            original_text = UNSET if raw is None else str(raw)
            original = current_value
        else:
            original_text = recorded
            original = default if recorded == UNSET else int(recorded)
        target = max(original, floor.min_replicas)
        if owner.via == "hpa" and spec.get("maxReplicas") is not None:
            # The API rejects minReplicas > maxReplicas; the floor is capped, not the HPA widened.
            target = min(target, int(spec["maxReplicas"]))
        if not ours:
            # Someone else set the value (or nobody did yet): never lower theirs.
            target = max(target, current_value)
        if current_value == target:
            # Already at the floor: with a record, it is ours and in place; without one, the
            # workload already meets the floor on its own and needs no record.
            return FloorResult(floor.workload, owner.via, owner.path, target, False, dry_run)
        record = {
            "metadata": {
                "labels": {FLOOR_LABEL: "active"},
                "annotations": {
                    owner.original_key: original_text,
                    SET_REPLICAS: str(target),
                    FLOOR_UNTIL: str(int(floor.until_s)),
                },
            }
        }
        rv = metadata["resourceVersion"]
        manager = self._config.field_manager
        if owner.via == "scale":
            # Record first (with a resourceVersion precondition), then scale through /scale: a
            # crash between the two leaves a record and an unchanged count.
            updated = self._kube.merge_patch(
                owner.path, record, field_manager=manager, dry_run=dry_run, resource_version=rv
            )
            if current_value != target:
                self._kube.merge_patch(
                    owner.path + "/scale",
                    {"spec": {"replicas": target}},
                    field_manager=manager,
                    dry_run=dry_run,
                    # The scale subresource shares the object's resourceVersion: this lands only
                    # if nobody changed the workload since the record was written.
                    resource_version=None if dry_run else updated["metadata"]["resourceVersion"],
                )
        else:
            # One write: the record and the raised minimum land together or not at all.
            body = {**record, "spec": {owner.field: target}}
            self._kube.merge_patch(
                owner.path, body, field_manager=manager, dry_run=dry_run, resource_version=rv
            )
        return FloorResult(floor.workload, owner.via, owner.path, target, True, dry_run)

    def restore(self, workload: WorkloadRef, *, dry_run: bool = False) -> bool:
        """Put back the recorded original of ``workload``'s floor and drop the record.

        Returns False when there was no record. Looks at every place a floor may have been written
        (the owner can have changed since, e.g. an HPA added after prewarm raised ``/scale``).
        """
        dry_run = dry_run or self._config.dry_run
        restored = False
        ns = workload.namespace
        candidates = [_Owner("scale", _workload_resource(workload), ns, workload.name, "replicas")]
        owner = self.owner(workload)
        if owner.via != "scale":
            candidates.append(owner)
        for candidate in candidates:
            for _ in range(_CONFLICT_RETRIES):
                try:
                    restored |= self._restore_once(candidate, dry_run=dry_run)
                    break
                except Conflict:
                    continue
            else:
                raise FailedPrecondition(f"{candidate.path} kept changing; retry next tick")
        return restored

    def _restore_once(self, owner: _Owner, *, dry_run: bool) -> bool:
        current = self._kube.get(owner.path)
        if current is None:
            return False
        metadata = current["metadata"]
        annotations = metadata.get("annotations") or {}
        recorded = annotations.get(owner.original_key)
        if recorded is None:
            return False
        spec = current.get("spec") or {}
        value = spec.get(owner.field)
        still_ours = value is not None and str(value) == annotations.get(SET_REPLICAS)
        unrecord = {
            "metadata": {
                "labels": {FLOOR_LABEL: None},
                "annotations": {owner.original_key: None, SET_REPLICAS: None, FLOOR_UNTIL: None},
            }
        }
        rv = metadata["resourceVersion"]
        manager = self._config.field_manager
        if owner.via == "scale":
            if still_ours:
                self._kube.merge_patch(
                    owner.path + "/scale",
                    {"spec": {"replicas": 1 if recorded == UNSET else int(recorded)}},
                    field_manager=manager,
                    dry_run=dry_run,
                    resource_version=rv,
                )
            # The record goes last: a crash before this restores again next time (idempotent).
            self._kube.merge_patch(owner.path, unrecord, field_manager=manager, dry_run=dry_run)
            return True
        body: Obj = dict(unrecord)
        if still_ours:
            # JSON merge patch: null removes the field, putting back "unset" exactly.
            body["spec"] = {owner.field: None if recorded == UNSET else int(recorded)}
        self._kube.merge_patch(
            owner.path, body, field_manager=manager, dry_run=dry_run, resource_version=rv
        )
        return True

    def floored(self) -> set[WorkloadRef]:
        """Workloads that carry an active prewarm floor record, found by the floor label."""
        selector = f"{FLOOR_LABEL}=active"
        found: set[WorkloadRef] = set()
        for item in self._kube.list(DEPLOYMENTS.path(), label_selector=selector):
            meta = item["metadata"]
            found.add(WorkloadRef(meta["namespace"], meta["name"]))
        scalers = [HPAS, SCALED_OBJECTS] if self.keda_enabled() else [HPAS]
        for resource in scalers:
            for item in self._kube.list(resource.path(), label_selector=selector):
                target = item["spec"].get("scaleTargetRef") or {}
                found.add(
                    WorkloadRef(
                        item["metadata"]["namespace"],
                        str(target.get("name")),
                        kind=str(target.get("kind") or "Deployment"),
                        api_version=str(target.get("apiVersion") or "apps/v1"),
                    )
                )
        return found

    def reconcile(
        self, floors: Sequence[ReplicaFloor], *, now_s: float, dry_run: bool = False
    ) -> list[FloorResult]:
        """Raise every active floor (the highest per workload) and restore every other record.

        A failure on one workload (missing, forbidden, API down) is that floor's ``error`` and
        never stops the others; a failed restore is logged and retried on the next call.
        """
        active: dict[WorkloadRef, ReplicaFloor] = {}
        for floor in floors:
            if now_s < floor.until_s and (
                floor.workload not in active
                or floor.min_replicas > active[floor.workload].min_replicas
            ):
                active[floor.workload] = floor
        results: list[FloorResult] = []
        for floor in active.values():
            try:
                results.append(self.raise_floor(floor, now_s=now_s, dry_run=dry_run))
            except PrewarmError as error:
                dry = dry_run or self._config.dry_run
                results.append(FloorResult(floor.workload, "scale", "", 0, False, dry, error))
        for workload in self.floored() - set(active):
            try:
                self.restore(workload, dry_run=dry_run)
            except PrewarmError as error:
                _log.warning("restoring the floor of %s failed (retried next tick): %s",
                             workload, error)  # fmt: skip
        return results


def workload_resource(workload: WorkloadRef) -> Resource:
    """The REST resource type of a model's serving workload (for readers such as the observer)."""
    return _workload_resource(workload)
