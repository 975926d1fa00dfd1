"""The real control plane the k8s tests run on: version, kwok nodes and pods, missing binaries."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

from actuator.kube import NODES, PODS, KubeClient
from tests.harness.k8s import GPU_RESOURCE, ControlPlane, make_kwok_nodes, require_binary, wait_for
from tests.harness.workloads import apply_pod, pod_body


@pytest.mark.k8s
def test_control_plane_is_the_pinned_release(k8s_api: k8s_client.ApiClient) -> None:
    version = k8s_client.VersionApi(k8s_api).get_code()
    assert version.git_version == "v1.37.2"


@pytest.mark.k8s
def test_kwok_nodes_in_a_pool_become_ready_and_run_bound_pods(
    k8s_api: k8s_client.ApiClient, kube: KubeClient, k8s_namespace: str
) -> None:
    names = make_kwok_nodes(k8s_api, pool=f"h-{k8s_namespace}", count=2, gpus=4)

    def ready(name: str) -> bool:
        node = kube.get(NODES.path(name=name))
        conditions = (node or {}).get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(lambda: all(ready(n) for n in names), what="kwok nodes Ready")
    node = kube.get(NODES.path(name=names[0]))
    assert node is not None
    assert node["status"]["allocatable"][GPU_RESOURCE] == "4"
    assert node["metadata"]["labels"]["prewarm.io/pool"] == f"h-{k8s_namespace}"
    apply_pod(kube, pod_body("p", namespace=k8s_namespace, image="x:1", node=names[0]))
    wait_for(
        lambda: (
            (kube.get(PODS.path(k8s_namespace, "p")) or {}).get("status", {}).get("phase")
            == "Running"
        ),
        what="kwok to run the pod",
    )


@pytest.mark.k8s
def test_apiserver_restart_keeps_objects(
    k8s_control_plane: ControlPlane, kube: KubeClient, k8s_namespace: str
) -> None:
    k8s_control_plane.restart_apiserver()

    assert kube.get(f"/api/v1/namespaces/{k8s_namespace}") is not None


def test_a_missing_binary_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREWARM_NO_SUCH_BIN", "/nonexistent/kube-apiserver")
    with pytest.raises(pytest.fail.Exception, match=r"run \./hack/testenv\.sh"):
        require_binary("PREWARM_NO_SUCH_BIN")
