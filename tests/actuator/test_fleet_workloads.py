"""Model to workload by rule (issue 19), on the real apiserver with KServe's and Knative's CRDs.

Workloads of every kind prewarm floors claim their model with the ``prewarm.io/model`` label (or,
for ids a label value cannot hold, the annotation); a catalog template maps the rest; the catalog
overrides both. Bad input (a template naming a missing workload, a claim by an object of a kind
prewarm cannot floor, two workloads claiming one model) is one clear error per model, surfaced as
that floor's action result, and the rest of the fleet is still floored.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actuator.apply import Actuator, results_per_action
from actuator.config import ActuatorConfig
from actuator.floors import MIN_SCALE, ReplicaFloors
from actuator.kube import KubeClient
from actuator.workloads import MODEL_ANNOTATION, MODEL_LABEL, WorkloadDiscovery
from common.ids import ModelId
from planner.actions import ReplicaFloor, WarmPlan, WorkloadRef
from planner.catalog import Catalog, parse_catalog
from planner.planner import workload_for
from tests.harness.crds import KNATIVE_SERVICES, KSERVE_INFERENCE_SERVICES, real_crds
from tests.harness.k8s import ControlPlane
from tests.harness.kube import FAST_RETRY
from tests.harness.serving import (
    controller_ref,
    inference_service,
    knative_service,
    kserve_raw_children,
    labelled_deployment,
    stateful_set,
)
from tests.harness.workloads import deployment, get

pytestmark = [pytest.mark.k8s, pytest.mark.acceptance_fleet]

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def serving_crds(k8s_control_plane: ControlPlane) -> Iterator[None]:
    """KServe's InferenceService and Knative's Service CRDs, for this module's tests."""
    kube = KubeClient(k8s_control_plane.admin_client(), FAST_RETRY)
    with real_crds(kube, KSERVE_INFERENCE_SERVICES, KNATIVE_SERVICES):
        yield


def replicas(kube: KubeClient, namespace: str, name: str, plural: str = "deployments") -> int:
    """``spec.replicas`` of a Deployment (or StatefulSet, ``plural="statefulsets"``)."""
    path = f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}"
    return int(get(kube, path)["spec"]["replicas"])


def floors_for(catalog: Catalog, models: list[ModelId], minimum: int) -> list[ReplicaFloor]:
    """The floors a plan would hold: each model's workload as the planner resolves it."""
    return [
        ReplicaFloor(
            model=model,
            workload=workload_for(catalog.spec(model)),
            min_replicas=minimum,
            until_s=NOW + 600,
            reason="forecast",
            value=1.0,
        )
        for model in models
    ]


@pytest.mark.usefixtures("serving_crds")
def test_labelled_workloads_of_every_kind_are_found_and_floored(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    # Model ids are unique per test: discovery looks across every namespace of the cluster.
    small, big, mistral, phi, pinned = (
        ModelId(f"{ns}-qwen-small"),
        ModelId(f"meta-llama/{ns}-Llama-3.1-8B"),  # no label value can hold it: the annotation
        ModelId(f"{ns}-mistral"),
        ModelId(f"{ns}-phi"),
        ModelId(f"{ns}-pinned"),
    )
    labelled_deployment(kube, ns, "small", labels={MODEL_LABEL: small})
    stateful_set(kube, ns, "llama", labels={MODEL_LABEL: ""}, annotations={MODEL_ANNOTATION: big})
    isvc = inference_service(kube, ns, "mistral", raw=True, labels={MODEL_LABEL: mistral})
    # KServe copies the label onto the Deployment and HPA it creates: still one claim (the top).
    kserve_raw_children(kube, isvc)
    knative_service(kube, ns, "phi", labels={MODEL_LABEL: phi})
    # The catalog overrides discovery: this model is labelled here but mapped elsewhere.
    labelled_deployment(kube, ns, "not-this", labels={MODEL_LABEL: pinned})
    deployment(kube, ns, "pinned-here")
    catalog = parse_catalog(
        f"models:\n  {pinned}:\n    workload: {{namespace: {ns}, name: pinned-here}}\n"
    )
    discovery = WorkloadDiscovery(kube, catalog)

    found = discovery.refresh()

    assert {m: found.workloads[m] for m in (small, big, mistral, phi)} == {
        small: WorkloadRef(ns, "small"),
        big: WorkloadRef(ns, "llama", "StatefulSet"),
        mistral: WorkloadRef(ns, "mistral", "InferenceService", "serving.kserve.io/v1beta1"),
        phi: WorkloadRef(ns, "phi", "Service", "serving.knative.dev/v1"),
    }
    assert pinned not in found.workloads
    assert not {small, big, mistral, phi, pinned} & set(discovery.problems())
    assert workload_for(catalog.spec(pinned)) == WorkloadRef(ns, "pinned-here")

    floors = ReplicaFloors(kube, config, problems=discovery.problems)
    results = floors.reconcile(
        floors_for(catalog, [small, big, mistral, phi, pinned], 3), now_s=NOW
    )

    assert [r.error for r in results] == [None] * 5
    assert replicas(kube, ns, "small") == 3
    assert replicas(kube, ns, "llama", "statefulsets") == 3
    assert get(kube, isvc)["spec"]["predictor"]["minReplicas"] == 3
    ksvc = get(kube, f"/apis/serving.knative.dev/v1/namespaces/{ns}/services/phi")
    assert ksvc["spec"]["template"]["metadata"]["annotations"][MIN_SCALE] == "3"
    assert replicas(kube, ns, "pinned-here") == 3
    assert replicas(kube, ns, "not-this") == 1
    kserve_dep = get(kube, f"/apis/apps/v1/namespaces/{ns}/deployments/mistral-predictor")
    assert kserve_dep["spec"]["replicas"] == 1  # KServe's, never written

    floors.reconcile([], now_s=NOW)  # every floor expires: each kind restored

    assert replicas(kube, ns, "small") == 1
    assert replicas(kube, ns, "llama", "statefulsets") == 1
    assert "minReplicas" not in get(kube, isvc)["spec"]["predictor"]
    ksvc = get(kube, f"/apis/serving.knative.dev/v1/namespaces/{ns}/services/phi")
    assert MIN_SCALE not in (ksvc["spec"]["template"]["metadata"].get("annotations") or {})


@pytest.mark.usefixtures("serving_crds")
def test_bad_input_is_one_clear_error_each_and_the_rest_of_the_fleet_is_floored(
    kube: KubeClient, config: ActuatorConfig, warnings_of: pytest.LogCaptureFixture
) -> None:
    ns = config.namespace
    ghost, good, twice, rollout, chat = (
        ModelId(f"acme/{ns}-ghost"),  # the template names a workload that does not exist
        ModelId(f"acme/{ns}-good"),  # the template names one that does
        ModelId(f"{ns}-twice"),  # two workloads claim it
        ModelId(f"{ns}-rollout"),  # claimed by a Deployment an Argo Rollout controls
        ModelId(f"{ns}-chat"),  # found by its label
    )
    deployment(kube, ns, f"{ns}-good-server")
    labelled_deployment(kube, ns, "twice-a", labels={MODEL_LABEL: twice})
    stateful_set(kube, ns, "twice-b", labels={MODEL_LABEL: twice})
    rollout_owner = controller_ref("argoproj.io/v1alpha1", "Rollout", "ro", "0000-1111")
    labelled_deployment(kube, ns, "ro-7f9c", labels={MODEL_LABEL: rollout}, owner=rollout_owner)
    knative_service(kube, ns, "chat", labels={MODEL_LABEL: chat})
    catalog = parse_catalog(f"workload_template: {{namespace: {ns}, name: '{{name}}-server'}}\n")
    discovery = WorkloadDiscovery(kube, catalog)
    discovery.refresh()
    actuator = Actuator(kube, config, workload_problems=discovery.problems)
    models = [ghost, good, twice, rollout, chat]
    plan = WarmPlan(now_s=NOW, actions=tuple(floors_for(catalog, models, 2)))

    report = actuator.apply_cluster(plan)
    results = {r.action.model: r for r in results_per_action(plan, report)}  # type: ignore[union-attr]

    assert {m: results[m].result for m in models} == {
        ghost: "error",
        good: "ok",
        twice: "error",
        rollout: "error",
        chat: "ok",
    }
    assert f"{ns}/{ns}-ghost-server for model {ghost} does not exist" in results[ghost].detail
    assert "claimed by 2 workloads" in results[twice].detail
    assert f"Deployment {ns}/twice-a" in results[twice].detail
    assert f"StatefulSet {ns}/twice-b" in results[twice].detail
    assert "controlled by Rollout ro" in results[rollout].detail
    # Nothing written for the unresolved models; the rest of the fleet floored.
    assert replicas(kube, ns, "twice-a") == 1
    assert replicas(kube, ns, "ro-7f9c") == 1
    good_path = f"/apis/apps/v1/namespaces/{ns}/deployments/{ns}-good-server"
    assert get(kube, good_path)["spec"]["replicas"] == 2
    ksvc = get(kube, f"/apis/serving.knative.dev/v1/namespaces/{ns}/services/chat")
    assert ksvc["spec"]["template"]["metadata"]["annotations"][MIN_SCALE] == "2"

    # Each problem is logged once, naming the model: the discovery's by the discovery, the
    # missing workload by the floors.
    def logged() -> list[str]:
        return [r.getMessage() for r in warnings_of.records]

    assert sum(str(twice) in message and "unresolved" in message for message in logged()) == 1
    assert sum(str(rollout) in message and "unresolved" in message for message in logged()) == 1
    assert sum(f"floor of model {ghost} failed" in message for message in logged()) == 1
    count = len(logged())
    discovery.refresh()  # unchanged problems are not logged again
    actuator.apply_cluster(plan)
    assert len(logged()) == count

    # The operator fixes the conflict: the model resolves and is floored on the next tick.
    kube.merge_patch(
        f"/apis/apps/v1/namespaces/{ns}/statefulsets/twice-b",
        {"metadata": {"labels": {MODEL_LABEL: None}}},
        field_manager="kubectl",
        dry_run=False,
    )
    discovery.refresh()
    assert twice not in discovery.problems()
    plan = WarmPlan(now_s=NOW, actions=tuple(floors_for(catalog, models, 2)))
    results = {
        r.action.model: r  # type: ignore[union-attr]
        for r in results_per_action(plan, actuator.apply_cluster(plan))
    }
    assert results[twice].result == "ok"
    assert replicas(kube, ns, "twice-a") == 2
