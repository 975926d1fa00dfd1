"""The chart's RBAC is sufficient and minimal, proven on a real apiserver with the real helm.

``helm template`` renders charts/prewarm; the test applies the ServiceAccount, PriorityClass and
RBAC objects, gets a token for the ServiceAccount through the TokenRequest API, and runs every
actuator operation as that ServiceAccount: all succeed. Then, one verb at a time, it removes that
verb from the rendered rules and shows the operations fail with 403 (so no verb is superfluous),
and shows a verb outside the rules is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from kubernetes import client as k8s_client

from actuator.capacity import NodeCapacityActuator
from actuator.capacity_result import CapacityResult
from actuator.config import ActuatorConfig, MachineDeploymentRef, PoolConfig
from actuator.floors import FloorResult, ReplicaFloors
from actuator.kube import DEPLOYMENTS, PODS, KubeClient, Obj
from actuator.prepull import ImagePrepuller, PrepullStatus
from actuator.workloads import MODEL_LABEL, WorkloadDiscovery
from common.errors import PermissionDenied
from common.ids import ModelId, PoolName
from planner.actions import ImagePrepull, NodeCapacity, ReplicaFloor, WorkloadRef
from planner.catalog import Catalog
from tests.actuator.conftest import CRDS
from tests.harness.crds import (
    KARPENTER_NODE_POOLS,
    KNATIVE_SERVICES,
    KSERVE_INFERENCE_SERVICES,
    real_crds,
)
from tests.harness.helm import CHART, helm, render
from tests.harness.k8s import ControlPlane, make_kwok_nodes, make_namespace, wait_for
from tests.harness.kube import FAST_RETRY, install_crd, remove_crds
from tests.harness.rbac import (
    RBAC_KINDS,
    RULE_KINDS,
    apply_as_helm,
    grants,
    revoked,
    service_account_token,
    service_account_user,
)
from tests.harness.serving import inference_service, knative_service, stateful_set
from tests.harness.workloads import deployment, hpa, machine_deployment, scaled_object

pytestmark = [pytest.mark.k8s, pytest.mark.helm]

NOW = 1_800_000_000.0


@dataclass
class Setup:
    admin: KubeClient
    actor: KubeClient  # the ServiceAccount
    user: str  # the ServiceAccount's user name
    prewarm_ns: str
    apps_ns: str
    pool: str
    md_path: str
    rbac: list[Obj]
    config: ActuatorConfig


@pytest.fixture
def karpenter_crd(kube: KubeClient) -> Iterator[None]:
    """Karpenter's real NodePool CRD: placing placeholders lists NodePools (for their limits)."""
    with real_crds(kube, KARPENTER_NODE_POOLS):
        yield


@pytest.fixture
def setup(
    plane: ControlPlane,
    kube: KubeClient,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    karpenter_crd: None,
) -> Iterator[Setup]:
    keda = install_crd(kube, CRDS / "scaledobjects.yaml")
    capi = install_crd(kube, CRDS / "machinedeployments.yaml")
    serving = ExitStack()  # KServe's and Knative's real CRDs, removed at teardown
    serving.enter_context(real_crds(kube, KSERVE_INFERENCE_SERVICES, KNATIVE_SERVICES))
    release = f"r{k8s_namespace}"
    docs = render(release=release, namespace=k8s_namespace)
    # The actuator's part of the chart (the chart also holds the daemon, agent, monitoring, ...).
    actuator_rbac = [
        doc for doc in docs
        if doc["kind"] in RBAC_KINDS and doc["metadata"]["name"] == f"{release}-prewarm-actuator"
    ]  # fmt: skip
    assert sorted(doc["kind"] for doc in actuator_rbac) == sorted(RBAC_KINDS)
    needed = [doc for doc in docs if doc["kind"] in {"ServiceAccount", "PriorityClass"}]
    apply_as_helm(kube, [*needed, *actuator_rbac])
    binding = next(doc for doc in actuator_rbac if doc["kind"] == "ClusterRoleBinding")
    sa = binding["subjects"][0]["name"]  # the ServiceAccount the actuator's rules are bound to
    token = service_account_token(kube, k8s_namespace, sa)
    actor = KubeClient(plane.token_client(token), FAST_RETRY)

    apps_ns = f"{k8s_namespace}-apps"
    make_namespace(k8s_api, apps_ns)
    pool = f"rbac-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=1)
    md_path = machine_deployment(kube, apps_ns, "md", replicas=1)
    deployment(kube, apps_ns, "plain")
    deployment(kube, apps_ns, "withhpa")
    hpa(kube, apps_ns, "withhpa")
    deployment(kube, apps_ns, "withkeda")
    scaled_object(kube, apps_ns, "withkeda", minimum=1)
    stateful_set(kube, apps_ns, "sts", labels={MODEL_LABEL: f"{apps_ns}-sts"})
    inference_service(kube, apps_ns, "isvc")
    knative_service(kube, apps_ns, "ksvc")
    md_ref = MachineDeploymentRef(namespace=apps_ns, name="md")
    config = ActuatorConfig(
        namespace=k8s_namespace,
        retry=FAST_RETRY,
        pools={"md-pool": PoolConfig(gpus_per_node=8, machine_deployment=md_ref)},
    )
    yield Setup(
        admin=kube,
        actor=actor,
        user=service_account_user(k8s_namespace, sa),
        prewarm_ns=k8s_namespace,
        apps_ns=apps_ns,
        pool=pool,
        md_path=md_path,
        rbac=[doc for doc in actuator_rbac if doc["kind"] in RULE_KINDS],
        config=config,
    )
    serving.close()
    remove_crds(kube, [keda], "keda.sh/v1alpha1")
    remove_crds(kube, [capi], "cluster.x-k8s.io/v1beta1")


def raise_first(results: Sequence[CapacityResult | FloorResult | PrepullStatus]) -> None:
    """The operations report per-item failures instead of raising: surface the first one."""
    for result in results:
        if result.error is not None:
            raise result.error


def every_operation(s: Setup, client: KubeClient) -> None:
    """Each actuator operation, applied and then cleaned up, as ``client``. Placing placeholders
    reads their PriorityClass and lists the Karpenter NodePools."""
    capacity = NodeCapacityActuator(client, s.config)
    planned = [
        NodeCapacity(PoolName("gpu"), 2, "r", 1.0),
        NodeCapacity(PoolName("md-pool"), 8, "r", 1.0),
    ]
    raise_first(capacity.reconcile(planned))
    raise_first(capacity.reconcile(planned[:1], dry_run=True))
    raise_first(capacity.reconcile([]))

    # Workload discovery lists every kind it finds models on (the daemon runs it each tick).
    found = WorkloadDiscovery(client, Catalog()).refresh()
    assert found.workloads[ModelId(f"{s.apps_ns}-sts")] == WorkloadRef(
        s.apps_ns, "sts", "StatefulSet"
    )

    floors = ReplicaFloors(client, s.config)
    kinds = {
        "sts": ("StatefulSet", "apps/v1"),
        "isvc": ("InferenceService", "serving.kserve.io/v1beta1"),
        "ksvc": ("Service", "serving.knative.dev/v1"),
    }
    floor_plan = [
        ReplicaFloor(
            ModelId(name),
            WorkloadRef(s.apps_ns, name, *kinds.get(name, ("Deployment", "apps/v1"))),
            3,
            NOW + 60,
            "r",
            1.0,
        )
        for name in ("plain", "withhpa", "withkeda", "sts", "isvc", "ksvc")
    ]
    raised = floors.reconcile(floor_plan, now_s=NOW)
    raise_first(raised)
    assert {result.via for result in raised} == {
        "scale", "hpa", "scaledobject", "inferenceservice", "knative"
    }  # fmt: skip
    floors.reconcile([], now_s=NOW)
    for workload in (floor.workload for floor in floor_plan):
        floors.restore(workload)  # raises what reconcile only logged (e.g. a 403)

    puller = ImagePrepuller(client, s.config)
    # With the model's workload: the pod runs in its namespace, with the pull Secrets of its pod
    # template and of its ServiceAccount (read here, which "get serviceaccounts" is for).
    workload = WorkloadRef(s.apps_ns, "plain")
    action = ImagePrepull(PoolName(s.pool), "registry.example/model:1", 2e9, "r", 1.0, workload)

    def pulled() -> bool:
        status = puller.reconcile([action], now_s=1e9)[0]
        raise_first([status])
        return status.done

    wait_for(pulled, what="pre-pull as the ServiceAccount")
    wait_for(lambda: puller.cleanup() == 0, what="pre-pull pods gone")


def reset(s: Setup) -> None:
    """Undo a half-finished :func:`every_operation` as admin, so the next run starts clean."""
    every_operation_cleanup = NodeCapacityActuator(s.admin, s.config)
    every_operation_cleanup.reconcile([])
    ReplicaFloors(s.admin, s.config).reconcile([], now_s=NOW)
    wait_for(lambda: ImagePrepuller(s.admin, s.config).cleanup() == 0, what="no pre-pull pods")
    assert s.admin.list(DEPLOYMENTS.path(s.prewarm_ns)) == []


def test_every_operation_succeeds_as_the_service_account(setup: Setup) -> None:
    every_operation(setup, setup.actor)

    assert setup.actor.list(DEPLOYMENTS.path(setup.prewarm_ns)) == []
    assert setup.actor.list(PODS.path(setup.prewarm_ns)) == []


def test_a_verb_outside_the_rules_is_refused(setup: Setup) -> None:
    with pytest.raises(PermissionDenied, match="forbidden"):
        setup.actor.delete(DEPLOYMENTS.path(setup.apps_ns, "plain"), dry_run=False)
    with pytest.raises(PermissionDenied):
        setup.actor.list("/api/v1/secrets")
    with pytest.raises(PermissionDenied):
        setup.actor.merge_patch(
            "/api/v1/nodes/" + f"{setup.pool}-0",
            {"metadata": {"labels": {"x": "y"}}},
            field_manager="prewarm",
            dry_run=False,
        )
    with pytest.raises(PermissionDenied):  # pre-pull pods are listed, never read one by one
        setup.actor.get(PODS.path(setup.apps_ns, "any"))
    with pytest.raises(PermissionDenied):  # pull Secrets are passed on by name, never read
        setup.actor.get(f"/api/v1/namespaces/{setup.apps_ns}/secrets/regcred")
    assert setup.admin.get(DEPLOYMENTS.path(setup.apps_ns, "plain")) is not None


@pytest.mark.slow
def test_no_verb_is_superfluous(setup: Setup) -> None:
    """Removing any single verb from the chart's rules makes some operation fail with 403."""
    checked = 0
    for grant in grants(setup.rbac):
        with revoked(setup.admin, setup.user, grant, then=lambda: reset(setup)):
            # The refusal names exactly the revoked verb and resource.
            refused = f'cannot {grant.verb} resource "{grant.resource}"'
            with pytest.raises(PermissionDenied, match=re.escape(refused)):
                every_operation(setup, setup.actor)
        checked += 1
    assert checked >= 15


def test_chart_priority_class_is_negative_and_matches_the_actuator_default() -> None:
    docs = render()
    name = ActuatorConfig().placeholder.priority_class
    classes = [doc for doc in docs if doc["kind"] == "PriorityClass"]
    priority_class = next(doc for doc in classes if doc["metadata"]["name"] == name)

    assert priority_class["value"] < 0
    assert priority_class["preemptionPolicy"] == "Never"
    assert priority_class["globalDefault"] is False


def test_chart_passes_helm_lint() -> None:
    linted = helm("lint", str(CHART))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "0 chart(s) failed" in linted.stdout
