"""Image pre-pull on a real fleet's terms (issue 19), on a real kube-apiserver with kwok nodes.

What this proves, each against the real apiserver and its admission chain:

- pull Secrets come from the model's workload: the pre-pull pod runs in the workload's namespace
  with the ``imagePullSecrets`` of its pod template and of its ServiceAccount (plus the helper
  image's), so a private image is pulled with the credentials its own pods use; for a Deployment,
  and for a KServe InferenceService and a Knative Service under their real CRDs;
- names are compared as a runtime resolves them: a catalog's ``nginx:1.27`` is cached on nodes
  whose status lists ``docker.io/library/nginx:1.27`` (as containerd reports it), and a digest
  matches a ``repo@sha256:...`` name;
- a pool is cached only when every Ready, schedulable node holds the image; a node that lacks it
  gets a pod, a node that joins gets one at the next step, and no node ever gets two;
- the pods are admitted in a namespace that enforces the ``restricted`` Pod Security Standard
  (PodSecurity admission is on by default in kube-apiserver), where a pod without the security
  context is refused;
- an invalid reference fails its own pre-pull with a clear error and the others go on.

What it cannot prove: kwok has no kubelet or runtime, so no image is pulled, no Secret is used
and runAsNonRoot is not checked at container start; kwok reports the pods Succeeded
(prewarm/up/kwok_stages.yaml) and this test writes ``status.images`` as a kubelet would.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig, PrepullConfig
from actuator.floors import workload_resource
from actuator.images import InvalidImageReference
from actuator.kube import NODES, PODS, KubeClient, Obj
from actuator.observer import KubeClusterObserver
from actuator.prepull import ImagePrepuller, PrepullStatus
from common.errors import PermissionDenied
from common.ids import ModelId, NodeName, PoolName
from planner.actions import ImagePrepull, WorkloadRef
from planner.catalog import Catalog, ModelSpec
from tests.harness.crds import KNATIVE_SERVICES, KSERVE_INFERENCE_SERVICES, real_crds
from tests.harness.k8s import make_kwok_nodes, make_namespace, wait_for
from tests.harness.kube import FAST_RETRY
from tests.harness.workloads import deployment_body

pytestmark = [pytest.mark.k8s, pytest.mark.acceptance_fleet]

NOW = 1_800_000_000.0
SHA = "sha256:" + "5f" * 32
MODEL = ModelId("llm")
SELECTOR = "app.kubernetes.io/component=image-prepull"


def prepull(pool: str, image: str, workload: WorkloadRef | None = None) -> ImagePrepull:
    return ImagePrepull(PoolName(pool), image, 2e9, "r", 1.0, workload)


def all_prepull_pods(kube: KubeClient) -> list[Obj]:
    """Pre-pull pods in every namespace, not being deleted."""
    pods = kube.list(PODS.path(), label_selector=SELECTOR)
    return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def step_until_done(puller: ImagePrepuller, action: ImagePrepull) -> PrepullStatus:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := puller.step(action, now_s=NOW)).done and s,
        timeout_s=60,
        interval_s=0.3,
        what=f"pre-pull of {action.image}",
    )


def report_images(kube: KubeClient, node: str, *names: list[str]) -> None:
    """Write ``status.images`` of ``node`` as its kubelet reports it (kwok reports none)."""
    wait_for(lambda: ready(kube.get(NODES.path(name=node))), what=f"kwok makes {node} Ready")
    images = [{"names": entry, "sizeBytes": 1_000_000} for entry in names]
    kube.merge_patch(
        NODES.path(name=node, sub="status"),
        {"status": {"images": images}},
        field_manager="kubelet",
        dry_run=False,
    )


def ready(node: Obj | None) -> bool:
    conditions = ((node or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def image_cached(kube: KubeClient, config: ActuatorConfig, pool: str, image: str) -> bool:
    """The observer's ``image_cached`` for a model running ``image`` in ``pool``."""
    spec = ModelSpec(
        model=MODEL,
        weights_gb=0.001,
        image=image,
        image_gb=1.0,
        replica_rps=1.0,
        compile_s=0.0,
        node_pool=PoolName(pool),
        workload=WorkloadRef(config.namespace, str(MODEL)),
    )
    observer = KubeClusterObserver(kube, config=config, catalog=Catalog({MODEL: spec}))

    async def observe() -> bool:
        try:
            snapshot = await observer.observe(now_s=NOW, models=[MODEL])
        finally:
            await observer.close()
        return snapshot.models[MODEL].image_cached

    return asyncio.run(observe())


@pytest.fixture
def apps(k8s_api: k8s_client.ApiClient, k8s_namespace: str) -> str:
    """The namespace of the model's workload (prewarm's own is ``k8s_namespace``)."""
    name = f"{k8s_namespace}-apps"
    make_namespace(k8s_api, name)
    return name


def test_pull_secrets_come_from_the_deployments_template_and_service_account(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str, apps: str
) -> None:
    pool = f"secrets-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=2)
    core = k8s_client.CoreV1Api(k8s_api)
    for secret in ("template-cred", "sa-cred", "helper-cred"):
        secret_body = {
            "metadata": {"name": secret},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": '{"auths": {}}'},
        }
        core.create_namespaced_secret(apps, secret_body)  # type: ignore[arg-type]
    sa = {"metadata": {"name": "serving"}, "imagePullSecrets": [{"name": "sa-cred"}]}
    core.create_namespaced_service_account(apps, sa)  # type: ignore[arg-type]
    body = deployment_body("llm", namespace=apps, image="registry.corp.example:5000/llm:v3")
    template = body["spec"]["template"]["spec"]
    template["serviceAccountName"] = "serving"
    template["imagePullSecrets"] = [{"name": "template-cred"}]
    kube.apply(f"/apis/apps/v1/namespaces/{apps}/deployments/llm", body, field_manager="kubectl",
               dry_run=False)  # fmt: skip
    config = ActuatorConfig(
        namespace=k8s_namespace,
        retry=FAST_RETRY,
        prepull=PrepullConfig(
            helper_image="registry.corp.example:5000/mirror/busybox:1.37-musl",
            helper_pull_secrets=["helper-cred"],
        ),
    )
    puller = ImagePrepuller(kube, config)
    action = prepull(pool, "registry.corp.example:5000/llm:v3", WorkloadRef(apps, "llm"))

    puller.step(action, now_s=NOW)

    pods = all_prepull_pods(kube)
    assert sorted(p["spec"]["nodeName"] for p in pods) == [f"{pool}-0", f"{pool}-1"]
    for pod in pods:
        # In the workload's namespace (where its Secrets are), none in prewarm's own.
        assert pod["metadata"]["namespace"] == apps
        assert [s["name"] for s in pod["spec"]["imagePullSecrets"]] == [
            "template-cred", "sa-cred", "helper-cred"
        ]  # fmt: skip
        assert pod["spec"]["initContainers"][0]["image"] == config.prepull.helper_image
        assert pod["metadata"]["annotations"]["prewarm.io/workload"] == f"Deployment/{apps}/llm"
    assert kube.list(PODS.path(k8s_namespace), label_selector=SELECTOR) == []

    status = step_until_done(puller, action)
    assert status.succeeded == {f"{pool}-0", f"{pool}-1"}
    wait_for(lambda: all_prepull_pods(kube) == [], what="pre-pull pods removed")


def test_a_workload_without_secrets_of_its_own_pulls_with_its_namespaces_default_account(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str, apps: str
) -> None:
    pool = f"default-sa-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=1)
    core = k8s_client.CoreV1Api(k8s_api)
    core.patch_namespaced_service_account(
        "default", apps, {"imagePullSecrets": [{"name": "ns-cred"}]}
    )
    body = deployment_body("llm", namespace=apps, image="registry.corp.example/llm:v3")
    kube.apply(f"/apis/apps/v1/namespaces/{apps}/deployments/llm", body, field_manager="kubectl",
               dry_run=False)  # fmt: skip
    config = ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)
    puller = ImagePrepuller(kube, config)

    # A workload that does not exist (yet) pulls in its namespace without Secrets of its own.
    ghost = prepull(pool, "registry.corp.example/ghost:1", WorkloadRef(apps, "ghost"))
    puller.step(ghost, now_s=NOW)
    puller.step(prepull(pool, "registry.corp.example/llm:v3", WorkloadRef(apps, "llm")), now_s=NOW)

    secrets = {
        pod["metadata"]["annotations"]["prewarm.io/image"]: [
            s["name"] for s in pod["spec"].get("imagePullSecrets") or []
        ]
        for pod in all_prepull_pods(kube)
    }
    # Both get the default ServiceAccount's Secret: read by prewarm for the Deployment's pods
    # (which name no ServiceAccount), added by ServiceAccount admission for the ghost's.
    assert secrets == {
        "registry.corp.example/llm:v3": ["ns-cred"],
        "registry.corp.example/ghost:1": ["ns-cred"],
    }
    assert ImagePrepuller(kube, config).cleanup() == 2


def test_short_names_count_as_cached_against_docker_io_library_names(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    pool = f"names-{k8s_namespace}"
    nodes = make_kwok_nodes(k8s_api, pool=pool, count=2)
    for node in nodes:  # containerd's names for an image pulled as "nginx:1.27"
        report_images(
            kube,
            node,
            [f"docker.io/library/nginx@{SHA}", "docker.io/library/nginx:1.27"],
            ["docker.io/vllm/vllm-openai:v0.9"],
        )
    config = ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)

    for image in ("nginx:1.27", "library/nginx:1.27", f"nginx@{SHA}", "vllm/vllm-openai:v0.9"):
        assert image_cached(kube, config, pool, image), image
        status = ImagePrepuller(kube, config).step(prepull(pool, image), now_s=NOW)
        assert status.succeeded == set(nodes), image
        assert status.done, image
    assert not image_cached(kube, config, pool, "nginx")  # latest is another image
    assert not image_cached(kube, config, pool, "ghcr.io/library/nginx:1.27")
    assert all_prepull_pods(kube) == []  # nothing to pull: no pod was created


def test_a_pool_is_cached_only_when_every_node_has_the_image(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    pool = f"partial-{k8s_namespace}"
    first, second, cordoned = make_kwok_nodes(k8s_api, pool=pool, count=3)
    k8s_client.CoreV1Api(k8s_api).patch_node(cordoned, {"spec": {"unschedulable": True}})
    report_images(kube, first, ["docker.io/library/nginx:1.27"])
    config = ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)
    puller = ImagePrepuller(kube, config)
    action = prepull(pool, "nginx:1.27")

    # One of the two schedulable nodes has it: the pool is not cached.
    assert not image_cached(kube, config, pool, "nginx:1.27")
    status = puller.step(action, now_s=NOW)

    assert status.succeeded == {first}
    assert status.pending == {second}
    assert [p["spec"]["nodeName"] for p in all_prepull_pods(kube)] == [second]
    assert step_until_done(puller, action).succeeded == {first, second}

    # Once the second node's kubelet reports it, the pool is cached (the cordoned one takes no
    # replica and is not waited for).
    report_images(kube, second, ["docker.io/library/nginx:1.27"])
    assert image_cached(kube, config, pool, "nginx:1.27")


def test_a_node_that_joins_gets_its_pull_at_the_next_step_and_never_two(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    pool = f"joins-{k8s_namespace}"
    (old,) = make_kwok_nodes(k8s_api, pool=pool, count=1)
    report_images(kube, old, ["docker.io/library/nginx:1.27"])
    config = ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)
    puller = ImagePrepuller(kube, config)
    # Two spellings of one image in one plan: one pull.
    actions = [prepull(pool, "nginx:1.27"), prepull(pool, "docker.io/library/nginx:1.27")]
    assert all(s.done for s in puller.reconcile(actions, now_s=NOW))
    assert image_cached(kube, config, pool, "nginx:1.27")

    # A node joins the pool (kwok registers it as a new node's kubelet would).
    new = f"{pool}-new"
    core = k8s_client.CoreV1Api(k8s_api)
    template = core.read_node(old).to_dict()
    body = {
        "metadata": {
            "name": new,
            "labels": {**template["metadata"]["labels"], "kubernetes.io/hostname": new},
            "annotations": template["metadata"]["annotations"],
        },
        "status": {"capacity": {"cpu": "64", "pods": "110"}},
    }
    core.create_node(body)  # type: ignore[arg-type]
    wait_for(lambda: ready(kube.get(NODES.path(name=new))), what="the new node is Ready")
    assert not image_cached(kube, config, pool, "nginx:1.27")  # it has nothing yet

    statuses = puller.reconcile(actions, now_s=NOW)
    assert [s.pending for s in statuses] == [{new}, {new}]
    for _ in range(3):  # more ticks before kwok finishes: still one pod on the new node
        puller.reconcile(actions, now_s=NOW)
        per_node = Counter(p["spec"]["nodeName"] for p in all_prepull_pods(kube))
        assert set(per_node) <= {new}
        assert all(count == 1 for count in per_node.values())

    def all_done() -> list[PrepullStatus] | None:
        found = puller.reconcile(actions, now_s=NOW)
        return found if all(s.done for s in found) else None

    done = wait_for(all_done, timeout_s=60, interval_s=0.3, what="the new node's pull")
    assert done[0].succeeded == {old, NodeName(new)}
    wait_for(lambda: all_prepull_pods(kube) == [], what="pre-pull pods removed")


def test_pods_are_admitted_where_pod_security_restricted_is_enforced(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str, apps: str
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.patch_namespace(apps, {"metadata": {"labels": labels}})
    pool = f"restricted-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=2)
    kube.apply(f"/apis/apps/v1/namespaces/{apps}/deployments/llm",
               deployment_body("llm", namespace=apps), field_manager="kubectl",
               dry_run=False)  # fmt: skip
    config = ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)
    puller = ImagePrepuller(kube, config)
    action = prepull(pool, "gcr.io/distroless/static-debian12:nonroot", WorkloadRef(apps, "llm"))

    # Enforcement is on: the same pod without its security context is refused.
    manifest = puller.pod_manifest(action, NodeName(f"{pool}-0"))
    manifest["metadata"]["namespace"] = apps
    del manifest["spec"]["securityContext"]
    for container in (*manifest["spec"]["initContainers"], *manifest["spec"]["containers"]):
        del container["securityContext"]
    with pytest.raises(PermissionDenied, match="violates PodSecurity"):
        kube.apply(PODS.path(apps, manifest["metadata"]["name"]), manifest,
                   field_manager="prewarm", dry_run=False)  # fmt: skip

    puller.step(action, now_s=NOW)  # raises if admission refuses a pod

    pods = all_prepull_pods(kube)
    assert len(pods) == 2
    assert {p["metadata"]["namespace"] for p in pods} == {apps}
    security = pods[0]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in (*pods[0]["spec"]["initContainers"], *pods[0]["spec"]["containers"]):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The busybox copy runs as that user: cp into the emptyDir, then run it from the target.
    init, main = pods[0]["spec"]["initContainers"][0], pods[0]["spec"]["containers"][0]
    assert init["command"] == ["/bin/busybox", "cp", "/bin/busybox", "/prewarm/busybox"]
    assert main["command"] == ["/prewarm/busybox", "true"]
    assert step_until_done(puller, action).succeeded == {f"{pool}-0", f"{pool}-1"}
    wait_for(lambda: all_prepull_pods(kube) == [], what="pre-pull pods removed")


def test_an_invalid_reference_fails_alone(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    pool = f"bad-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=1)
    config = ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)
    puller = ImagePrepuller(kube, config)
    bad = prepull(pool, "Registry.Example/Model:1")  # upper-case repository: no runtime takes it
    good = prepull(pool, "registry.example/model:1")

    bad_status, good_status = puller.reconcile([bad, good], now_s=NOW)

    assert isinstance(bad_status.error, InvalidImageReference)
    assert "'Model'" in str(bad_status.error)
    assert "lower case" in str(bad_status.error)
    assert good_status.error is None
    assert good_status.pending == {f"{pool}-0"}
    assert not image_cached(kube, config, pool, "Registry.Example/Model:1")
    with pytest.raises(InvalidImageReference):
        puller.step(bad, now_s=NOW)
    assert puller.cleanup() == 1


KSERVE = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "llm"},
    "spec": {
        "predictor": {
            "serviceAccountName": "serving",
            "imagePullSecrets": [{"name": "predictor-cred"}],
            "containers": [{"name": "kserve-container", "image": "registry.corp.example/llm:v3"}],
        }
    },
}
KNATIVE = {
    "apiVersion": "serving.knative.dev/v1",
    "kind": "Service",
    "metadata": {"name": "llm"},
    "spec": {
        "template": {
            "spec": {
                "serviceAccountName": "serving",
                "imagePullSecrets": [{"name": "template-cred"}],
                "containers": [{"image": "registry.corp.example/llm:v3"}],
            }
        }
    },
}


@pytest.mark.parametrize(
    ("crd", "body", "secrets"),
    [
        (KSERVE_INFERENCE_SERVICES, KSERVE, ["predictor-cred", "sa-cred"]),
        (KNATIVE_SERVICES, KNATIVE, ["template-cred", "sa-cred"]),
    ],
    ids=["kserve-inferenceservice", "knative-service"],
)
def test_pull_secrets_of_kserve_and_knative_workloads(
    kube: KubeClient,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    apps: str,
    crd: str,
    body: Obj,
    secrets: list[str],
) -> None:
    pool = f"crd-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=1)
    sa = {"metadata": {"name": "serving"}, "imagePullSecrets": [{"name": "sa-cred"}]}
    k8s_client.CoreV1Api(k8s_api).create_namespaced_service_account(apps, sa)  # type: ignore[arg-type]
    workload = WorkloadRef(apps, "llm", kind=body["kind"], api_version=body["apiVersion"])
    config = ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)
    puller = ImagePrepuller(kube, config)
    with real_crds(kube, crd):
        path = workload_resource(workload).path(apps, "llm")
        wait_for(lambda: kube.list(workload_resource(workload).path(apps)) == [],
                 what=f"{body['kind']} served")  # fmt: skip
        kube.apply(path, {**body, "metadata": {"name": "llm", "namespace": apps}},
                   field_manager="kubectl", dry_run=False)  # fmt: skip

        puller.step(prepull(pool, "registry.corp.example/llm:v3", workload), now_s=NOW)

        (pod,) = all_prepull_pods(kube)
        assert pod["metadata"]["namespace"] == apps
        assert [s["name"] for s in pod["spec"]["imagePullSecrets"]] == secrets
        assert puller.cleanup() == 1
