"""Replica floors: keep at least N replicas of a model's workload until the floor expires.

Owns choosing *where* a floor is written, never fighting the autoscaler that owns the workload:

- a KServe InferenceService -> its ``spec.predictor.minReplicas``, in every deployment mode: KServe
  turns it into the ``min-scale`` of the Knative Service it owns (serverless), or into the
  ``minReplicas`` of the HPA / ``minReplicaCount`` of the KEDA ScaledObject it owns, or the
  Deployment's replicas when its autoscaler class is ``none`` (RawDeployment / Standard). Those
  objects are KServe's: a write there is undone on KServe's next reconcile. Unset means 1
  (KServe's ``DefaultMinReplicas``);
- a Knative Service -> the annotation ``autoscaling.knative.dev/min-scale`` (or the older
  ``minScale`` spelling when only that one is present; Knative reads ``min-scale`` first) on
  ``spec.template.metadata.annotations``, the documented place; the KPA then keeps that many pods
  of the revision, capped at ``max-scale`` and ``activation-scale`` (Knative's webhook rejects a
  ``min-scale`` above either). A template change makes Knative stamp out a NEW Revision that takes
  over the traffic routed to the latest revision: raising or restoring a floor is a (quick)
  rollout; the revision left behind loses its ``min-scale`` once no route reaches it (Knative
  applies ``min-scale`` to reachable revisions only) and scales down. A Service whose traffic is
  pinned to named revisions, or whose template names its revision, is refused with an error
  saying so (the floor would warm a revision no request reaches, or Knative's webhook would reject
  the change). Unset means the cluster's ``min-scale`` (config-autoscaler), 0 by default;
- a KEDA ScaledObject targets it -> the ScaledObject's ``spec.minReplicaCount`` (KEDA owns the HPA
  it generates and would overwrite any change made there);
- else an HPA targets it -> the HPA's ``spec.minReplicas`` (never ``/scale``: the HPA would undo it,
  and a fight between two controllers flaps the replica count);
- else -> the workload's ``/scale`` subresource (Deployment, StatefulSet).

The value before prewarm's first change is recorded on the same object in
``prewarm.io/original-min-replicas`` (InferenceService, Knative Service, HPA, ScaledObject) or
``prewarm.io/original-replicas`` (``/scale``), with ``prewarm.io/set-replicas`` (what prewarm
wrote) and the label ``prewarm.io/floor=active`` so expired floors can be found. Except for
``/scale``, record and raise are ONE write; for ``/scale`` the record is written first. Either way
there is never a raised floor without a recorded original. When someone else changes the value
while a floor stands, their value becomes the recorded original (the operator's last change wins,
on every path). On expiry the original is restored, unless someone else changed the value since
prewarm set it (theirs is kept); then the record is removed.

A model whose workload could not be resolved (see :mod:`actuator.workloads`: two workloads claim
it, or the one that claims it is controlled by a kind prewarm cannot floor) gets that problem as
its floor's ``error``, and nothing is written for it.

Must not: lower a value someone else raised, or write to a workload another autoscaler owns, or
to an object another controller owns (one with a ``controller: true`` ownerReference, e.g. what
KServe or Knative create): that floor fails with an error naming the controller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from actuator.config import ActuatorConfig
from actuator.kube import (
    DEPLOYMENTS,
    HPAS,
    INFERENCE_SERVICES,
    KNATIVE_SERVICES,
    SCALED_OBJECTS,
    STATEFULSETS,
    Conflict,
    KubeClient,
    Obj,
    Resource,
)
from common.errors import FailedPrecondition, InvalidInput, NotFound, PrewarmError
from common.ids import ModelId
from planner.actions import ReplicaFloor, WorkloadRef

_log = logging.getLogger(__name__)

ORIGINAL_MIN = "prewarm.io/original-min-replicas"
ORIGINAL_REPLICAS = "prewarm.io/original-replicas"
SET_REPLICAS = "prewarm.io/set-replicas"
FLOOR_UNTIL = "prewarm.io/floor-until"
FLOOR_LABEL = "prewarm.io/floor"
UNSET = "unset"
_CONFLICT_RETRIES = 5

MIN_SCALE = "autoscaling.knative.dev/min-scale"
MIN_SCALE_LEGACY = "autoscaling.knative.dev/minScale"
MAX_SCALE = "autoscaling.knative.dev/max-scale"
MAX_SCALE_LEGACY = "autoscaling.knative.dev/maxScale"
ACTIVATION_SCALE = "autoscaling.knative.dev/activation-scale"
_TEMPLATE_ANNOTATIONS = ("spec", "template", "metadata", "annotations")

Via = Literal["scaledobject", "hpa", "scale", "inferenceservice", "knative"]

Problems = Callable[[], Mapping[ModelId, PrewarmError]]
"""Per model, why its workload could not be resolved (e.g. :meth:`WorkloadDiscovery.problems`)."""


@dataclass(frozen=True, slots=True)
class WorkloadKind:
    """A kind of serving workload prewarm floors, and where its floor lives."""

    kind: str
    resource: Resource
    via: Via

    @property
    def group(self) -> str:
        return self.resource.api_version.rpartition("/")[0]


WORKLOAD_KINDS: tuple[WorkloadKind, ...] = (
    WorkloadKind("Deployment", DEPLOYMENTS, "scale"),
    WorkloadKind("StatefulSet", STATEFULSETS, "scale"),
    WorkloadKind("InferenceService", INFERENCE_SERVICES, "inferenceservice"),
    WorkloadKind("Service", KNATIVE_SERVICES, "knative"),
)
"""The workload kinds prewarm discovers and floors (by kind and API group)."""


def workload_kind(workload: WorkloadRef) -> WorkloadKind | None:
    """The known kind of ``workload`` (matched by kind and API group), or None."""
    group = workload.api_version.rpartition("/")[0]
    for known in WORKLOAD_KINDS:
        if known.kind == workload.kind and known.group == group:
            return known
    return None


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

    @property
    def path(self) -> str:
        return self.resource.path(self.namespace, self.name)

    @property
    def original_key(self) -> str:
        return ORIGINAL_REPLICAS if self.via == "scale" else ORIGINAL_MIN

    @property
    def default(self) -> int:
        """The value an unset field means to the controller that reads it."""
        # KEDA minReplicaCount and Knative min-scale default to 0; Deployment/StatefulSet
        # replicas, HPA minReplicas and KServe minReplicas (DefaultMinReplicas) to 1.
        return 0 if self.via in ("scaledobject", "knative") else 1

    def field(self, obj: Obj) -> tuple[str, ...]:
        """The path, from the object's root, of the value that holds the floor."""
        if self.via == "inferenceservice":
            return ("spec", "predictor", "minReplicas")
        if self.via == "knative":
            # Knative reads min-scale, else the older camelCase key: write the one it reads, so
            # an object that spells it the old way does not end up with two values.
            present = _dig(obj, _TEMPLATE_ANNOTATIONS) or {}
            legacy = MIN_SCALE_LEGACY in present and MIN_SCALE not in present
            key = MIN_SCALE_LEGACY if legacy else MIN_SCALE
            return (*_TEMPLATE_ANNOTATIONS, key)
        name = {"scaledobject": "minReplicaCount", "hpa": "minReplicas"}.get(self.via, "replicas")
        return ("spec", name)

    def cap(self, obj: Obj) -> int | None:
        """The largest floor the object accepts (its maximum), or None when unbounded."""
        if self.via == "hpa":
            # The API rejects minReplicas > maxReplicas: the floor is capped, the HPA not widened.
            raw = _dig(obj, ("spec", "maxReplicas"))
        elif self.via == "inferenceservice":
            raw = _dig(obj, ("spec", "predictor", "maxReplicas"))  # 0: unlimited (KServe)
        elif self.via == "knative":
            # Knative's webhook rejects min-scale above max-scale ("0": unlimited) and above
            # activation-scale (the least a revision scales to from zero).
            present = _dig(obj, _TEMPLATE_ANNOTATIONS) or {}
            bounds = [
                _as_int(present.get(key, present.get(legacy)), where=f"{self.path} {key}")
                for key, legacy in ((MAX_SCALE, MAX_SCALE_LEGACY), (ACTIVATION_SCALE, None))
            ]
            return min((b for b in bounds if b), default=None)
        else:
            return None
        value = _as_int(raw, where=f"{self.path} maximum")
        return value if value else None


def _dig(obj: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _nest(path: Sequence[str], value: Any) -> Obj:
    body: Any = value
    for key in reversed(path):
        body = {key: body}
    return dict(body)


def _as_int(raw: Any, *, where: str) -> int | None:
    if raw is None:
        return None
    try:
        return int(str(raw))
    except ValueError:
        message = f"{where} is {raw!r}, not a whole number; fix it on the object"
        raise InvalidInput(message) from None


def _workload_resource(workload: WorkloadRef) -> Resource:
    known = workload_kind(workload)
    if known is not None:
        return known.resource
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
    """Raises and restores replica floors. KEDA, KServe and Knative support is on when their CRD
    is served. ``problems`` (optional) names, per model, why its workload is unresolved: such a
    model's floor fails with that error and nothing is written for it."""

    def __init__(
        self, kube: KubeClient, config: ActuatorConfig, *, problems: Problems | None = None
    ) -> None:
        self._kube = kube
        self._config = config
        self._keda: bool | None = None
        self._problems = problems
        self._failing: dict[ModelId, str] = {}  # the last error logged per model

    def _serves(self, resource: Resource) -> bool:
        """Whether ``resource``'s API is served, asked on every call: a CRD installed after
        prewarm started must still have its floors found and restored."""
        return self._kube.served(resource.api_version)

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
        known = workload_kind(workload)
        if known is not None and known.via != "scale":
            # KServe and Knative own the autoscalers (and Deployments) below these objects.
            return _Owner(known.via, known.resource, ns, workload.name)
        if self.keda_enabled():
            for item in self._kube.list(SCALED_OBJECTS.path(ns)):
                if scale_target_matches(item["spec"].get("scaleTargetRef") or {}, workload):
                    name = item["metadata"]["name"]
                    return _Owner("scaledobject", SCALED_OBJECTS, ns, name)
        for item in self._kube.list(HPAS.path(ns)):
            owners = item["metadata"].get("ownerReferences") or []
            if any(ref.get("kind") == "ScaledObject" for ref in owners):
                continue  # KEDA's own HPA: the ScaledObject is the place to write.
            if scale_target_matches(item["spec"].get("scaleTargetRef") or {}, workload):
                return _Owner("hpa", HPAS, ns, item["metadata"]["name"])
        return _Owner("scale", _workload_resource(workload), ns, workload.name)

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
                "exist; fix the model's workload (catalog entry, workload_template, or the "
                "prewarm.io/model label on the workload)"
            )
        controller = _controller(current)
        if controller is not None:
            # e.g. the Deployment and HPA KServe makes for an InferenceService, or a Knative
            # Revision's Deployment: their controller resets whatever prewarm would write.
            kind = controller.get("kind")
            raise FailedPrecondition(
                f"{owner.via} {owner.namespace}/{owner.name} for model {floor.model} is "
                f"controlled by {kind} {controller.get('name')}, which would undo a floor "
                f"written there: map the model to the {kind} if it is a kind prewarm floors "
                "(see docs/workloads.md), else to a workload nothing else controls"
            )
        if owner.via == "knative":
            _check_knative(current, owner)
        metadata = current["metadata"]
        annotations = metadata.get("annotations") or {}
        field = owner.field(current)
        default = owner.default
        raw = _dig(current, field)
        parsed = _as_int(raw, where=f"{owner.path} {'.'.join(field)}")
        current_value = default if parsed is None else parsed
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
        cap = owner.cap(current)
        if cap is not None:
            # A floor above the object's own maximum is refused (HPA) or silently clamped by its
            # controller (KServe, Knative): the floor is capped, the maximum never widened.
            target = min(target, cap)
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
            # One write: the record and the raised minimum land together or not at all. Every
            # floor field lies under "spec", so the two parts of the patch never overlap.
            body = {**record, **_nest(field, _encode(owner, target))}
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
        owner = self.owner(workload)
        candidates = [owner]
        if owner.via in ("hpa", "scaledobject"):
            # The floor may have gone to /scale before this autoscaler was added.
            candidates.insert(0, _Owner("scale", _workload_resource(workload), ns, workload.name))
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
        field = owner.field(current)
        value = _dig(current, field)
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
            original = None if recorded == UNSET else _encode(owner, int(recorded))
            body.update(_nest(field, original))
        self._kube.merge_patch(
            owner.path, body, field_manager=manager, dry_run=dry_run, resource_version=rv
        )
        return True

    def floored(self) -> set[WorkloadRef]:
        """Workloads that carry an active prewarm floor record, found by the floor label.

        Objects controlled by another object are left out: KServe copies an InferenceService's
        labels and annotations (prewarm's record among them) onto the Deployment, HPA, KEDA
        ScaledObject or Knative Service it creates, and those are KServe's to write, not ours.
        """
        selector = f"{FLOOR_LABEL}=active"
        found: set[WorkloadRef] = set()
        for known in WORKLOAD_KINDS:
            if known.resource.api_version != "apps/v1" and not self._serves(known.resource):
                continue
            for item in self._kube.list(known.resource.path(), label_selector=selector):
                meta = item["metadata"]
                if _controller(item) is None:
                    ref = WorkloadRef(meta["namespace"], meta["name"], known.kind,
                                      known.resource.api_version)  # fmt: skip
                    found.add(ref)
        scalers = [HPAS, SCALED_OBJECTS] if self.keda_enabled() else [HPAS]
        for resource in scalers:
            for item in self._kube.list(resource.path(), label_selector=selector):
                if _controller(item) is not None:
                    continue
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
        problems = self._problems() if self._problems is not None else {}
        for floor in active.values():
            problem = problems.get(floor.model)
            if problem is not None:
                # Logged once per change by the resolver; here it becomes this floor's result.
                dry = dry_run or self._config.dry_run
                results.append(FloorResult(floor.workload, "scale", "", 0, False, dry, problem))
                continue
            try:
                results.append(self.raise_floor(floor, now_s=now_s, dry_run=dry_run))
            except PrewarmError as error:
                dry = dry_run or self._config.dry_run
                results.append(FloorResult(floor.workload, "scale", "", 0, False, dry, error))
                if self._failing.get(floor.model) != str(error):
                    # Once per model and message, not every tick: the result carries it each time.
                    _log.warning("floor of model %s failed: %s", floor.model, error)
                self._failing[floor.model] = str(error)
            else:
                if self._failing.pop(floor.model, None) is not None:
                    _log.info("floor of model %s applies again", floor.model)
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


def _controller(obj: Obj) -> Obj | None:
    """The ownerReference of ``obj``'s controller, or None."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def _encode(owner: _Owner, value: int) -> int | str:
    # Annotations hold strings; the replica fields integers.
    return str(value) if owner.via == "knative" else value


def _check_knative(service: Obj, owner: _Owner) -> None:
    """Refuse a Knative Service where a template change cannot warm the serving revision."""
    where = f"Knative Service {owner.namespace}/{owner.name}"
    revision = _dig(service, ("spec", "template", "metadata", "name"))
    if revision:
        # Knative's webhook rejects a template change that keeps a user-chosen revision name.
        raise FailedPrecondition(
            f"{where} names its revision ({revision!r}): Knative rejects a template change "
            "without a new name, so prewarm cannot set min-scale; drop spec.template.metadata."
            "name, or map the model to another workload"
        )
    traffic = _dig(service, ("spec", "traffic")) or []
    if traffic and not any(t.get("latestRevision") for t in traffic):
        # min-scale lands on the new revision that the template change creates; with all
        # traffic pinned to named revisions that revision would be warm and never receive one.
        raise FailedPrecondition(
            f"{where} routes all traffic to named revisions: the revision a min-scale change "
            "creates would get none; route traffic to latestRevision, or map the model to "
            "another workload"
        )
