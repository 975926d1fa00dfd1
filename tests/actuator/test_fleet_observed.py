"""The observer reads replicas of InferenceServices and Knative Services from their pods (issue 19).

Neither kind carries replica counts or a pod selector; their pods carry the labels KServe and
Knative give them. Real apiserver, real CRDs, kwok nodes running the pods; no agents (every node's
agent is unknown, which only affects holdings).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig
from actuator.kube import KubeClient, Obj
from actuator.observer import KubeClusterObserver
from common.ids import ModelId
from planner.catalog import parse_catalog
from tests.harness.crds import KNATIVE_SERVICES, KSERVE_INFERENCE_SERVICES, real_crds
from tests.harness.k8s import ControlPlane, make_kwok_nodes, wait_for
from tests.harness.kube import FAST_RETRY
from tests.harness.serving import inference_service, knative_service
from tests.harness.workloads import apply_pod, pod_body

pytestmark = [pytest.mark.k8s, pytest.mark.acceptance_fleet]

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def serving_crds(k8s_control_plane: ControlPlane) -> Iterator[None]:
    """KServe's InferenceService and Knative's Service CRDs, for this module's tests."""
    kube = KubeClient(k8s_control_plane.admin_client(), FAST_RETRY)
    with real_crds(kube, KSERVE_INFERENCE_SERVICES, KNATIVE_SERVICES):
        yield


def ready(kube: KubeClient, path: str) -> bool:
    pod: Obj = kube.get(path) or {}
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@pytest.mark.usefixtures("serving_crds")
async def test_inference_service_and_knative_replicas_come_from_their_pods(
    k8s_api: k8s_client.ApiClient, kube: KubeClient, config: ActuatorConfig
) -> None:
    ns = config.namespace
    pool = f"fleet-{ns}"
    (node,) = make_kwok_nodes(k8s_api, pool=pool, count=1, gpus=4)
    inference_service(kube, ns, "qwen")
    knative_service(kube, ns, "chat")
    image = "vllm/vllm-openai:v0.9"
    predictor = {"serving.kserve.io/inferenceservice": "qwen", "component": "predictor"}
    transformer = {"serving.kserve.io/inferenceservice": "qwen", "component": "transformer"}
    pods = [
        pod_body("qwen-p-1", namespace=ns, image=image, node=node, labels=predictor),
        pod_body("qwen-p-2", namespace=ns, image=image, node=node, labels=predictor),
        pod_body("qwen-t-1", namespace=ns, image=image, node=node, labels=transformer),
        pod_body("qwen-p-3", namespace=ns, image=image, labels=predictor),  # not scheduled
        pod_body("chat-1", namespace=ns, image=image, node=node,
                 labels={"serving.knative.dev/service": "chat"}),
    ]  # fmt: skip
    paths = [apply_pod(kube, body) for body in pods]
    for path in paths[:3] + paths[4:]:
        wait_for(lambda path=path: ready(kube, path), what=f"kwok runs {path}")
    qwen, chat = ModelId("Qwen/qwen"), ModelId("chat")
    catalog = parse_catalog(
        f"models:\n"
        f"  {qwen}:\n    node_pool: {pool}\n    workload: {{namespace: {ns}, name: qwen, "
        "kind: InferenceService, api_version: serving.kserve.io/v1beta1}\n"
        f"  {chat}:\n    node_pool: {pool}\n    workload: {{namespace: {ns}, name: chat, "
        "kind: Service, api_version: serving.knative.dev/v1}\n"
    )
    observer = KubeClusterObserver(kube, config=config, catalog=catalog)
    try:
        snapshot = await observer.observe(now_s=NOW, models=[qwen, chat])
    finally:
        await observer.close()

    # Two ready predictor pods, one pending (starting); the transformer is not the predictor.
    assert snapshot.models[qwen].ready_replicas == 2
    assert snapshot.models[qwen].starting_replicas == 1
    assert snapshot.models[chat].ready_replicas == 1
    (state,) = [n for n in snapshot.nodes if n.name == node]
    assert state.running == {qwen, chat}
