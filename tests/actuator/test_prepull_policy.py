"""The chart's ValidatingAdmissionPolicy narrows the actuator's cluster-wide pod rights to its own
pre-pull pods, on the real API server (its CEL is compiled and enforced there).

RBAC must grant create/patch/delete on pods in every namespace, since pre-pull pods run in the
workloads' namespaces (docs/prepull.md). ``helm template`` renders the chart; the ServiceAccount,
the actuator's RBAC and the policy with its binding are applied; then, as that ServiceAccount:
image pre-pull works end to end in a workload namespace, while deleting or changing a user's pod,
creating an unlabelled pod and creating a "pre-pull" pod that runs as root, mounts a hostPath or
uses another ServiceAccount are all refused. The policy only binds prewarm's ServiceAccount:
an administrator is not affected.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig
from actuator.kube import PODS, KubeClient, Obj
from actuator.prepull import ImagePrepuller, PullContext
from common.errors import PermissionDenied
from common.ids import NodeName, PoolName
from planner.actions import ImagePrepull, WorkloadRef
from tests.harness.helm import render
from tests.harness.k8s import ControlPlane, make_kwok_nodes, make_namespace, wait_for
from tests.harness.kube import FAST_RETRY
from tests.harness.rbac import RBAC_KINDS, apply_as_helm, object_path, service_account_token
from tests.harness.workloads import apply_pod, deployment, pod_body

pytestmark = [pytest.mark.k8s, pytest.mark.helm, pytest.mark.acceptance_fleet]

NOW = 1_800_000_000.0
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
REFUSED = "prewarm may only create, change and delete its own image pre-pull pods"
UNSAFE = "a pre-pull pod runs as non-root"


@dataclass
class Setup:
    admin_api: k8s_client.ApiClient
    admin: KubeClient
    actor: KubeClient
    apps: str
    pool: str
    config: ActuatorConfig


def policy_path(doc: Obj) -> str:
    plural = {
        "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    }[doc["kind"]]
    return f"/apis/admissionregistration.k8s.io/v1/{plural}/{doc['metadata']['name']}"


@pytest.fixture
def setup(
    k8s_control_plane: ControlPlane,
    kube: KubeClient,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
) -> Iterator[Setup]:
    release = f"v{k8s_namespace}"
    docs = render(release=release, namespace=k8s_namespace)
    rbac = [
        doc for doc in docs
        if doc["kind"] in RBAC_KINDS and doc["metadata"]["name"] == f"{release}-prewarm-actuator"
    ]  # fmt: skip
    policy = [doc for doc in docs if doc["kind"] in POLICY_KINDS]
    assert sorted(doc["kind"] for doc in policy) == sorted(POLICY_KINDS)
    accounts = [doc for doc in docs if doc["kind"] == "ServiceAccount"]
    apply_as_helm(kube, [*accounts, *rbac])
    for doc in policy:
        kube.apply(policy_path(doc), doc, field_manager="helm", dry_run=False)
    binding = next(doc for doc in rbac if doc["kind"] == "ClusterRoleBinding")
    token = service_account_token(kube, k8s_namespace, binding["subjects"][0]["name"])
    actor = KubeClient(k8s_control_plane.token_client(token), FAST_RETRY)
    apps = f"{k8s_namespace}-apps"
    make_namespace(k8s_api, apps)
    pool = f"vap-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=2)
    deployment(kube, apps, "llm")
    yield Setup(
        k8s_api, kube, actor, apps, pool, ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)
    )
    for doc in [*policy, *rbac]:
        if doc["kind"] in {*POLICY_KINDS, "ClusterRole", "ClusterRoleBinding"}:
            path = policy_path(doc) if doc["kind"] in POLICY_KINDS else object_path(doc)
            kube.delete(path, dry_run=False)


def action(s: Setup, image: str = "registry.corp.example/llm:v3") -> ImagePrepull:
    return ImagePrepull(PoolName(s.pool), image, 2e9, "r", 1.0, WorkloadRef(s.apps, "llm"))


def refusal(call: Callable[[], object]) -> str:
    """The error ``call()`` is refused with ("" when it was admitted)."""
    try:
        call()
    except PermissionDenied as error:
        return str(error)
    return ""


def test_the_actuator_may_touch_only_its_own_safe_pre_pull_pods(setup: Setup) -> None:
    s = setup
    user_pod = apply_pod(s.admin, pod_body("user", namespace=s.apps, image="user/app:1"))
    unlabelled = pod_body("sneaky", namespace=s.apps, image="busybox:1.37-musl")
    path = PODS.path(s.apps, "sneaky")
    # The policy takes effect once the API server has compiled it: wait until it refuses.
    wait_for(
        lambda: (
            REFUSED
            in refusal(
                lambda: s.actor.apply(path, unlabelled, field_manager="prewarm", dry_run=True)
            )
        ),
        what="the policy enforced",
    )

    # A user's pod: neither deleted nor changed (e.g. relabelled, to pass as prewarm's).
    assert REFUSED in refusal(lambda: s.actor.delete(user_pod, dry_run=False))
    labels = {
        "app.kubernetes.io/managed-by": "prewarm",
        "app.kubernetes.io/component": "image-prepull",
    }
    relabel = {"metadata": {"labels": labels}}
    assert REFUSED in refusal(
        lambda: s.actor.merge_patch(user_pod, relabel, field_manager="prewarm", dry_run=False)
    )
    assert s.admin.get(user_pod) is not None

    # A pod labelled as a pre-pull pod but unsafe: root, a hostPath, another ServiceAccount.
    puller = ImagePrepuller(s.actor, s.config)
    good = puller.pod_manifest(
        action(s), NodeName(f"{s.pool}-0"), context=PullContext(s.apps, ("cred",))
    )
    root = copy.deepcopy(good)
    root["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    host = copy.deepcopy(good)
    host["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    account = copy.deepcopy(good)
    account["spec"]["serviceAccountName"] = "powerful"
    k8s_client.CoreV1Api(s.admin_api).create_namespaced_service_account(
        s.apps,
        {"metadata": {"name": "powerful"}},  # type: ignore[arg-type]
    )

    def create(pod: Obj) -> Callable[[], object]:
        target = PODS.path(s.apps, pod["metadata"]["name"])
        return lambda: s.actor.apply(target, pod, field_manager="prewarm", dry_run=True)

    for unsafe in (root, host, account):
        error = refusal(create(unsafe))
        assert UNSAFE in error, error
    # The same pod, as prewarm builds it, is admitted.
    assert refusal(create(good)) == ""

    # The real pre-pull, as the ServiceAccount: created, tracked and removed in the workload's
    # namespace.
    status = wait_for(
        lambda: (st := puller.step(action(s), now_s=NOW)).done and st,
        timeout_s=60,
        interval_s=0.3,
        what="pre-pull as the ServiceAccount under the policy",
    )
    assert status.succeeded == {f"{s.pool}-0", f"{s.pool}-1"}
    wait_for(lambda: puller.cleanup() == 0, what="pre-pull pods removed")

    # The administrator is not bound by it.
    s.admin.delete(user_pod, dry_run=False)
