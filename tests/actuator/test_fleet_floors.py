"""Floors where models run (issue 19), on the real apiserver with KServe's and Knative's REAL CRDs.

InferenceService floors go to ``spec.predictor.minReplicas`` (never to the Deployment or HPA KServe
owns), Knative Service floors to the revision template's ``min-scale`` annotation; the original is
recorded on the object, restored exactly once, and an operator's change while a floor stands wins.
No KServe or Knative controller runs: the tests assert the objects, which the apiserver validated
against the projects' schemas.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actuator.config import ActuatorConfig
from actuator.floors import (
    FLOOR_LABEL,
    MIN_SCALE,
    MIN_SCALE_LEGACY,
    ORIGINAL_MIN,
    SET_REPLICAS,
    UNSET,
    ReplicaFloors,
)
from actuator.kube import KubeClient, Obj
from common.errors import FailedPrecondition
from common.ids import ModelId
from planner.actions import ReplicaFloor, WorkloadRef
from tests.harness.crds import KNATIVE_SERVICES, KSERVE_INFERENCE_SERVICES, real_crds
from tests.harness.k8s import ControlPlane
from tests.harness.kube import FAST_RETRY
from tests.harness.serving import inference_service, knative_service, kserve_raw_children
from tests.harness.workloads import get

pytestmark = [pytest.mark.k8s, pytest.mark.acceptance_fleet]

NOW = 1_800_000_000.0
ISVC = ("InferenceService", "serving.kserve.io/v1beta1")
KSVC = ("Service", "serving.knative.dev/v1")


@pytest.fixture(scope="module")
def serving_crds(k8s_control_plane: ControlPlane) -> Iterator[None]:
    """KServe's InferenceService and Knative's Service CRDs, for this module's tests."""
    kube = KubeClient(k8s_control_plane.admin_client(), FAST_RETRY)
    with real_crds(kube, KSERVE_INFERENCE_SERVICES, KNATIVE_SERVICES):
        yield


def floor(
    namespace: str, name: str, kind: tuple[str, str], minimum: int, *, until: float = NOW + 600
) -> ReplicaFloor:
    return ReplicaFloor(
        model=ModelId(name),
        workload=WorkloadRef(namespace, name, kind=kind[0], api_version=kind[1]),
        min_replicas=minimum,
        until_s=until,
        reason="forecast p90 needs more replicas at 09:00",
        value=300.0,
    )


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


def template_annotations(obj: Obj) -> dict[str, str]:
    return dict(obj["spec"]["template"].get("metadata", {}).get("annotations") or {})


def predictor(obj: Obj) -> Obj:
    return dict(obj["spec"]["predictor"])


@pytest.mark.usefixtures("serving_crds")
def test_inference_service_floor_raises_min_replicas_and_restores_unset(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    path = inference_service(kube, ns, "qwen")  # serverless, minReplicas unset (KServe: 1)
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(ns, "qwen", ISVC, 3), now_s=NOW)

    assert (result.via, result.value, result.changed) == ("inferenceservice", 3, True)
    raised = get(kube, path)
    assert predictor(raised)["minReplicas"] == 3
    assert annotations_of(raised)[ORIGINAL_MIN] == UNSET
    assert annotations_of(raised)[SET_REPLICAS] == "3"
    assert raised["metadata"]["labels"][FLOOR_LABEL] == "active"
    assert {w for w in floors.floored() if w.namespace == ns} == {WorkloadRef(ns, "qwen", *ISVC)}

    rv = raised["metadata"]["resourceVersion"]
    assert not floors.raise_floor(floor(ns, "qwen", ISVC, 3), now_s=NOW).changed
    assert get(kube, path)["metadata"]["resourceVersion"] == rv  # idempotent: no write

    floors.reconcile([], now_s=NOW)  # the floor left the plan

    restored = get(kube, path)
    assert "minReplicas" not in predictor(restored)  # back to unset, exactly
    assert ORIGINAL_MIN not in annotations_of(restored)
    assert FLOOR_LABEL not in (restored["metadata"].get("labels") or {})
    rv = restored["metadata"]["resourceVersion"]
    floors.reconcile([], now_s=NOW)  # restored once: a second pass writes nothing
    assert get(kube, path)["metadata"]["resourceVersion"] == rv


@pytest.mark.usefixtures("serving_crds")
def test_raw_deployment_floor_goes_to_the_inference_service_not_kserves_hpa(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    path = inference_service(kube, ns, "raw", min_replicas=1, max_replicas=4, raw=True)
    dep_path, hpa_path = kserve_raw_children(kube, path)
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(ns, "raw", ISVC, 6), now_s=NOW)

    # Capped at the InferenceService's maxReplicas (KServe would clamp it anyway).
    assert (result.via, result.value) == ("inferenceservice", 4)
    assert predictor(get(kube, path))["minReplicas"] == 4
    assert get(kube, hpa_path)["spec"]["minReplicas"] == 1  # KServe's HPA: untouched
    assert get(kube, dep_path)["spec"]["replicas"] == 1  # KServe's Deployment: untouched

    # KServe copies the InferenceService's labels and annotations (prewarm's record among them)
    # onto what it creates; those copies must never be taken for floors of prewarm's own.
    kserve_raw_children(kube, path)
    assert get(kube, hpa_path)["metadata"]["labels"][FLOOR_LABEL] == "active"
    assert {w for w in floors.floored() if w.namespace == ns} == {WorkloadRef(ns, "raw", *ISVC)}
    hpa_rv = get(kube, hpa_path)["metadata"]["resourceVersion"]

    floors.reconcile([], now_s=NOW)

    assert predictor(get(kube, path))["minReplicas"] == 1
    assert get(kube, hpa_path)["metadata"]["resourceVersion"] == hpa_rv


@pytest.mark.usefixtures("serving_crds")
def test_inference_service_operators_last_change_wins(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    path = inference_service(kube, ns, "llama", min_replicas=2)
    floors = ReplicaFloors(kube, config)
    floors.raise_floor(floor(ns, "llama", ISVC, 5), now_s=NOW)
    assert predictor(get(kube, path))["minReplicas"] == 5

    # While the floor stands the operator lowers minReplicas to 3 ...
    kube.merge_patch(
        path, {"spec": {"predictor": {"minReplicas": 3}}}, field_manager="kubectl", dry_run=False
    )
    # ... the next tick still raises to the floor, but records 3 as the original ...
    floors.raise_floor(floor(ns, "llama", ISVC, 5), now_s=NOW)
    raised = get(kube, path)
    assert predictor(raised)["minReplicas"] == 5
    assert annotations_of(raised)[ORIGINAL_MIN] == "3"
    # ... and on expiry 3 is what comes back.
    floors.reconcile([floor(ns, "llama", ISVC, 5, until=NOW + 60)], now_s=NOW + 61)
    assert predictor(get(kube, path))["minReplicas"] == 3

    # A change by the operator after prewarm raised is kept at restore.
    floors.raise_floor(floor(ns, "llama", ISVC, 4), now_s=NOW)
    kube.merge_patch(
        path, {"spec": {"predictor": {"minReplicas": 7}}}, field_manager="kubectl", dry_run=False
    )
    floors.reconcile([], now_s=NOW)
    kept = get(kube, path)
    assert predictor(kept)["minReplicas"] == 7
    assert ORIGINAL_MIN not in annotations_of(kept)


@pytest.mark.usefixtures("serving_crds")
def test_knative_service_floor_sets_min_scale_on_the_template_and_restores(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    path = knative_service(
        kube, ns, "chat", template_annotations={"autoscaling.knative.dev/max-scale": "5"}
    )
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(ns, "chat", KSVC, 3), now_s=NOW)

    assert (result.via, result.value, result.changed) == ("knative", 3, True)
    raised = get(kube, path)
    assert template_annotations(raised)[MIN_SCALE] == "3"
    assert annotations_of(raised)[ORIGINAL_MIN] == UNSET  # on the Service, not the template
    assert ORIGINAL_MIN not in template_annotations(raised)  # (no revision churn from records)
    assert {w for w in floors.floored() if w.namespace == ns} == {WorkloadRef(ns, "chat", *KSVC)}

    # Capped at max-scale: min-scale above it would be clamped by the KPA.
    assert floors.raise_floor(floor(ns, "chat", KSVC, 9), now_s=NOW).value == 5
    assert template_annotations(get(kube, path))[MIN_SCALE] == "5"

    floors.reconcile([], now_s=NOW)

    restored = get(kube, path)
    assert MIN_SCALE not in template_annotations(restored)
    assert template_annotations(restored) == {"autoscaling.knative.dev/max-scale": "5"}
    assert ORIGINAL_MIN not in annotations_of(restored)


@pytest.mark.usefixtures("serving_crds")
def test_knative_service_keeps_the_older_min_scale_key_and_the_operators_change(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    path = knative_service(kube, ns, "legacy", template_annotations={MIN_SCALE_LEGACY: "1"})
    floors = ReplicaFloors(kube, config)

    floors.raise_floor(floor(ns, "legacy", KSVC, 4), now_s=NOW)

    raised = template_annotations(get(kube, path))
    # Knative refuses both spellings at once: the one in use is the one written.
    assert raised == {MIN_SCALE_LEGACY: "4"}

    patch = {"spec": {"template": {"metadata": {"annotations": {MIN_SCALE_LEGACY: "6"}}}}}
    kube.merge_patch(path, patch, field_manager="kubectl", dry_run=False)
    floors.reconcile([], now_s=NOW)

    assert template_annotations(get(kube, path)) == {MIN_SCALE_LEGACY: "6"}  # theirs is kept
    assert ORIGINAL_MIN not in annotations_of(get(kube, path))


@pytest.mark.usefixtures("serving_crds")
def test_knative_min_scale_never_exceeds_activation_scale(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    activation = {"autoscaling.knative.dev/activation-scale": "2"}
    path = knative_service(kube, ns, "burst", template_annotations=activation)
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(ns, "burst", KSVC, 5), now_s=NOW)

    # Knative's webhook rejects min-scale above activation-scale: the floor is capped there.
    assert result.value == 2
    assert template_annotations(get(kube, path)) == {**activation, MIN_SCALE: "2"}


@pytest.mark.usefixtures("serving_crds")
def test_knative_service_that_cannot_take_a_template_change_is_refused(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    pinned = knative_service(
        kube, ns, "pinned", traffic=[{"revisionName": "pinned-00001", "percent": 100}]
    )
    named = knative_service(kube, ns, "named", revision_name="named-v1")
    floors = ReplicaFloors(kube, config)

    results = floors.reconcile(
        [floor(ns, "pinned", KSVC, 2), floor(ns, "named", KSVC, 2)], now_s=NOW
    )

    errors = {result.workload.name: result.error for result in results}
    assert isinstance(errors["pinned"], FailedPrecondition)
    assert "named revisions" in str(errors["pinned"])
    assert isinstance(errors["named"], FailedPrecondition)
    assert "names its revision ('named-v1')" in str(errors["named"])
    for path in (pinned, named):
        assert MIN_SCALE not in template_annotations(get(kube, path))
        assert ORIGINAL_MIN not in annotations_of(get(kube, path))


@pytest.mark.usefixtures("serving_crds")
def test_a_floor_on_an_object_kserve_controls_is_refused_naming_the_inference_service(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    path = inference_service(kube, ns, "owned", min_replicas=1, max_replicas=4, raw=True)
    dep_path, hpa_path = kserve_raw_children(kube, path)
    # A catalog entry pointing at the Deployment KServe made, which its HPA (KServe's too) targets.
    predictor_deployment = WorkloadRef(ns, "owned-predictor")
    floors = ReplicaFloors(kube, config)
    hpa_rv = get(kube, hpa_path)["metadata"]["resourceVersion"]
    dep_rv = get(kube, dep_path)["metadata"]["resourceVersion"]

    [result] = floors.reconcile(
        [ReplicaFloor(ModelId("owned"), predictor_deployment, 3, NOW + 600, "r", 1.0)], now_s=NOW
    )

    assert isinstance(result.error, FailedPrecondition)
    assert "controlled by InferenceService owned" in str(result.error)
    assert get(kube, hpa_path)["metadata"]["resourceVersion"] == hpa_rv
    assert get(kube, dep_path)["metadata"]["resourceVersion"] == dep_rv
