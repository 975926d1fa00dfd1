"""Which workload serves each model, found in the cluster: ``prewarm.io/model`` on the workload.

Owns: listing the workloads prewarm floors (:data:`actuator.floors.WORKLOAD_KINDS`: Deployments,
StatefulSets, KServe InferenceServices, Knative Services; the last two only where their CRD is
served) that carry the label ``prewarm.io/model``, reading each one's model id, and publishing the
result as :attr:`planner.catalog.Catalog.discovered` plus one problem per model that cannot be
resolved (:meth:`WorkloadDiscovery.problems`, which :class:`actuator.floors.ReplicaFloors` turns
into that model's floor error). Must not: write anything, or override a catalog entry's
``workload`` (the catalog wins: such models are neither discovered nor reported).

The model id of a labelled object is its annotation ``prewarm.io/model`` when present, else the
label's value. A label value cannot hold ``/`` and is at most 63 characters, so an id such as
``meta-llama/Llama-3.1-8B`` goes in the annotation, with the label present (any value, ``""``
will do): the label is what the apiserver selects on, so only labelled objects are listed.

Rules, and the Kubernetes quirks behind them:

- An object controlled by another object (a ``controller: true`` ownerReference) is not a workload
  of its own. KServe copies an InferenceService's labels onto the Deployment, HPA or Knative
  Service it creates, and Knative copies a Service's labels onto its Configuration, Revisions and
  their Deployments; writing a floor on those would fight the controller. Such a claim is dropped
  when its model has a claim that is not controlled (the top object, labelled too); when it is
  the model's only claim the model is unresolved: label the controlling object instead (a kind
  prewarm cannot floor, e.g. an Argo Rollout or a LeaderWorkerSet, is named as such).
- Two or more top objects claiming one model leave it unresolved (naming each): prewarm cannot
  guess which one serves it. A catalog entry's ``workload`` settles it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

from actuator.floors import WORKLOAD_KINDS, WorkloadKind, workload_kind
from actuator.kube import KubeClient, Obj
from common.errors import FailedPrecondition, PrewarmError
from common.ids import ModelId
from planner.actions import WorkloadRef
from planner.catalog import Catalog
from planner.observed import ClusterSnapshot

_log = logging.getLogger(__name__)

MODEL_LABEL = "prewarm.io/model"
MODEL_ANNOTATION = "prewarm.io/model"

KSERVE_POD_LABELS = {"serving.kserve.io/inferenceservice": "{name}", "component": "predictor"}
"""Labels KServe puts on an InferenceService's predictor pods, in every deployment mode
(``constants.InferenceServicePodLabelKey`` and ``KServiceComponentLabel``)."""
KNATIVE_POD_LABELS = {"serving.knative.dev/service": "{name}"}
"""The label Knative puts on every pod of every revision of a Service."""


@dataclass(frozen=True, slots=True)
class Claim:
    """One labelled object: the model it serves, where it is, and its controller if any."""

    model: ModelId
    workload: WorkloadRef
    controller: str | None
    """``Kind name`` of the object's controller (None: a top object)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """What one discovery found: a workload per resolved model, a problem per unresolved one."""

    workloads: Mapping[ModelId, WorkloadRef]
    problems: Mapping[ModelId, FailedPrecondition]


def _describe(workload: WorkloadRef) -> str:
    known = workload_kind(workload)
    kind = workload.kind
    if known is not None and known.kind == "Service":
        kind = "Knative Service"
    return f"{kind} {workload.namespace}/{workload.name}"


def resolve(claims: Sequence[Claim], *, overridden: AbstractSet[ModelId]) -> Resolution:
    """Each model's workload from ``claims`` by the rules of the module docstring (pure).

    Models in ``overridden`` (their catalog entry names a workload) are left out entirely.
    """
    by_model: dict[ModelId, list[Claim]] = {}
    for claim in claims:
        if claim.model not in overridden:
            by_model.setdefault(claim.model, []).append(claim)
    workloads: dict[ModelId, WorkloadRef] = {}
    problems: dict[ModelId, FailedPrecondition] = {}
    for model, found in sorted(by_model.items()):
        tops = sorted({c.workload for c in found if c.controller is None}, key=_describe)
        if len(tops) == 1:
            workloads[model] = tops[0]
        elif len(tops) > 1:
            names = ", ".join(_describe(w) for w in tops)
            problems[model] = FailedPrecondition(
                f"model {model} is claimed by {len(tops)} workloads ({names}) through the "
                f"{MODEL_LABEL} label/annotation: keep it on one, or name the workload in the "
                "model's catalog entry"
            )
        else:
            claim = min(found, key=lambda c: _describe(c.workload))
            controller = str(claim.controller)
            kinds = ", ".join(
                "Knative Service" if k.kind == "Service" else k.kind for k in WORKLOAD_KINDS
            )
            problems[model] = FailedPrecondition(
                f"model {model} is claimed only by {_describe(claim.workload)}, which is "
                f"controlled by {controller}: a floor written there would be undone by its "
                f"controller. Put the {MODEL_LABEL} label on the controlling object if it is a "
                f"kind prewarm floors ({kinds}), else name a workload in the model's catalog entry"
            )
    return Resolution(workloads=workloads, problems=problems)


def claim_of(obj: Obj, kind: WorkloadKind) -> Claim | None:
    """The claim of one listed object, or None when it names no model (logged by the caller)."""
    metadata = obj["metadata"]
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    model = annotations.get(MODEL_ANNOTATION) or labels.get(MODEL_LABEL) or ""
    if not model:
        return None
    controller = None
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller"):
            controller = f"{ref.get('kind')} {ref.get('name')}"
    workload = WorkloadRef(
        namespace=metadata["namespace"],
        name=metadata["name"],
        kind=kind.kind,
        api_version=kind.resource.api_version,
    )
    return Claim(ModelId(model), workload, controller)


def replica_view(workload: WorkloadRef, obj: Obj | None, pods: Sequence[Obj]) -> Obj | None:
    """``obj`` as the observer reads a workload: ``spec.selector`` (its pods), ``spec.replicas``
    and ``status.readyReplicas``. A Deployment or StatefulSet is returned as it is. An
    InferenceService or Knative Service has none of these fields (their replicas live in objects
    KServe and Knative create), so its view is built from ``pods`` (the observation's pod list):
    the pods carrying the labels KServe / Knative give them in ``workload``'s namespace, not
    terminating; ``readyReplicas`` counts those whose Ready condition is True."""
    known = workload_kind(workload)
    if obj is None or known is None or known.via == "scale":
        return obj
    labels = KSERVE_POD_LABELS if known.via == "inferenceservice" else KNATIVE_POD_LABELS
    selector = {key: value.format(name=workload.name) for key, value in labels.items()}
    mine = [
        pod
        for pod in pods
        if pod["metadata"].get("namespace") == workload.namespace
        and not pod["metadata"].get("deletionTimestamp")
        and selector.items() <= (pod["metadata"].get("labels") or {}).items()
    ]
    ready = sum(1 for pod in mine if _pod_ready(pod))
    return {
        "metadata": obj["metadata"],
        "spec": {"selector": {"matchLabels": selector}, "replicas": len(mine)},
        "status": {"readyReplicas": ready},
    }


def _pod_ready(pod: Obj) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


class WorkloadDiscovery:
    """Finds each model's workload by label and publishes it into ``catalog`` (see the module
    docstring). :meth:`refresh` is blocking I/O (run it in a worker thread)."""

    def __init__(self, kube: KubeClient, catalog: Catalog) -> None:
        self._kube = kube
        self._catalog = catalog
        self._problems: Mapping[ModelId, FailedPrecondition] = {}
        self._unnamed: set[str] = set()
        self._refreshed = False

    def has_mapping(self) -> bool:
        """Whether any :meth:`refresh` has succeeded (so there is a last mapping to keep)."""
        return self._refreshed

    def problems(self) -> Mapping[ModelId, PrewarmError]:
        """Why each unresolved model has no workload (as of the last :meth:`refresh`)."""
        return self._problems

    def refresh(self) -> Resolution:
        """List the labelled workloads, resolve them, and publish the result.

        An API failure raises (a :class:`PrewarmError`) and keeps the last result published.
        """
        claims: list[Claim] = []
        for kind in WORKLOAD_KINDS:
            if kind.resource.api_version != "apps/v1" and not self._kube.served(
                kind.resource.api_version
            ):
                continue  # KServe / Knative not installed: nothing of that kind to find
            for obj in self._kube.list(kind.resource.path(), label_selector=MODEL_LABEL):
                claim = claim_of(obj, kind)
                if claim is not None:
                    claims.append(claim)
                    continue
                where = f"{kind.kind} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
                if where not in self._unnamed:
                    self._unnamed.add(where)
                    _log.warning(
                        "%s carries the %s label with an empty value and no %s annotation: it "
                        "names no model; put the model id in one of them",
                        where, MODEL_LABEL, MODEL_ANNOTATION,
                    )  # fmt: skip
        overridden = {m for m, spec in self._catalog.specs.items() if spec.workload is not None}
        resolution = resolve(claims, overridden=overridden)
        for model, problem in resolution.problems.items():
            if str(self._problems.get(model)) != str(problem):
                _log.warning("workload of model %s unresolved (no floor for it): %s", model,
                             problem)  # fmt: skip
        for model in set(self._problems) - set(resolution.problems):
            _log.info("workload of model %s resolved again", model)
        # Replaced whole, never mutated: readers in other threads see one result or the next.
        self._catalog.discovered = resolution.workloads
        self._problems = resolution.problems
        self._refreshed = True
        return resolution


class _Observer(Protocol):
    """The daemon's ``ClusterObserver`` (``prewarm.cycle.interfaces``, which this layer may not
    import): :class:`actuator.observer.KubeClusterObserver` in production."""

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot: ...


class DiscoveringObserver:
    """A :class:`ClusterObserver` that refreshes workload discovery before each observation, so
    the observation and the plan of a tick use the same mapping. A failed refresh is logged and
    the last mapping kept (the observation then decides whether the tick goes on)."""

    def __init__(self, inner: _Observer, discovery: WorkloadDiscovery) -> None:
        self._inner = inner
        self._discovery = discovery

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """Refresh discovery, then observe through the wrapped observer."""
        try:
            await asyncio.to_thread(self._discovery.refresh)
        except PrewarmError as error:
            if self._discovery.has_mapping():
                _log.warning("workload discovery failed; keeping the last mapping: %s", error)
            else:
                _log.warning("workload discovery failed; no mapping yet: %s", error)
        return await self._inner.observe(now_s=now_s, models=models)
