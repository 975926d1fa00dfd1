"""Faults on the way to a real apiserver: 429, 5xx, lost answers, 409 conflicts, a restart.

Every test ends by checking the cluster converged to the same state as without the fault, with no
duplicate objects and never a raised floor without its recorded original.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client

from actuator.capacity import PlaceholderCapacity
from actuator.config import ActuatorConfig, RetryConfig
from actuator.floors import ORIGINAL_MIN, ORIGINAL_REPLICAS, ReplicaFloors
from actuator.kube import DEPLOYMENTS, PODS, KubeClient
from actuator.prepull import ImagePrepuller
from common.errors import TemporaryError
from common.ids import ModelId, PoolName
from planner.actions import ImagePrepull, NodeCapacity, ReplicaFloor, WorkloadRef
from tests.actuator.faultproxy import Fault, FaultProxy
from tests.harness.k8s import ControlPlane, make_kwok_nodes, wait_for
from tests.harness.workloads import deployment, get, hpa

pytestmark = pytest.mark.k8s

NOW = 1_800_000_000.0


@pytest.fixture
def proxy(plane: ControlPlane) -> Iterator[FaultProxy]:
    started = FaultProxy(upstream=plane.url, pki=plane.workdir / "pki").start()
    yield started
    started.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def faulty(plane: ControlPlane, proxy: FaultProxy, sleeps: list[float]) -> KubeClient:
    """A KubeClient through the fault proxy; records its backoff sleeps (and sleeps briefly)."""

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(min(seconds, 0.05))

    api = plane.token_client("unused", host=proxy.url)
    return KubeClient(
        api, RetryConfig(attempts=6, initial_backoff_s=0.1, max_backoff_s=2.0), sleep=sleep
    )


def floor(namespace: str, minimum: int) -> ReplicaFloor:
    return ReplicaFloor(
        model=ModelId("llama"),
        workload=WorkloadRef(namespace, "llama"),
        min_replicas=minimum,
        until_s=NOW + 600,
        reason="r",
        value=1.0,
    )


def capacity(pool: str, gpus: int) -> NodeCapacity:
    return NodeCapacity(pool=PoolName(pool), gpus=gpus, reason="r", value=1.0)


def test_429_and_5xx_are_retried_with_backoff(
    faulty: KubeClient, kube: KubeClient, config: ActuatorConfig, proxy: FaultProxy,
    sleeps: list[float],
) -> None:  # fmt: skip
    proxy.faults += [
        Fault("PATCH", "/deployments/", status=429, retry_after_s=1),
        Fault("PATCH", "/deployments/", status=503),
        Fault("PATCH", "/deployments/", status=500),
        Fault("GET", "/deployments/", status=504),
    ]

    result = PlaceholderCapacity(faulty, config).apply(capacity("a", 2))

    assert result.replicas == 2
    assert sleeps[0] == 0.1  # the GET's 504: the first backoff
    assert 1.0 in sleeps  # Retry-After of the 429 honoured over the shorter backoff
    assert len(kube.list(DEPLOYMENTS.path(config.namespace))) == 1
    assert (
        proxy.count("PATCH", "/deployments/", status=200)
        + proxy.count("PATCH", "/deployments/", status=201)
        == 1
    )


def test_persistent_overload_becomes_a_temporary_error(
    faulty: KubeClient, config: ActuatorConfig, proxy: FaultProxy
) -> None:
    proxy.faults.append(Fault("GET", "/deployments/", status=503, times=100))

    with pytest.raises(TemporaryError, match="failed 6 times"):
        PlaceholderCapacity(faulty, config).apply(capacity("a", 2))


def test_lost_answers_never_create_duplicates(
    faulty: KubeClient, kube: KubeClient, config: ActuatorConfig, proxy: FaultProxy,
    k8s_api: k8s_client.ApiClient,
) -> None:  # fmt: skip
    pool = f"dup-{config.namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=2)
    # The first create of each kind lands in etcd but its answer is lost; the client retries.
    proxy.faults += [
        Fault("PATCH", "/deployments/", action="drop_after"),
        Fault("PATCH", "/pods/", action="drop_after", times=2),
        Fault("PATCH", "/deployments/", action="drop_before"),
    ]

    PlaceholderCapacity(faulty, config).apply(capacity("a", 2))
    PlaceholderCapacity(faulty, config).apply(capacity("a", 3))
    action = ImagePrepull(pool=PoolName(pool), image="img:1", deadline_s=2e9, reason="r", value=1)
    ImagePrepuller(faulty, config).step(action, now_s=1e9)

    assert [d["spec"]["replicas"] for d in kube.list(DEPLOYMENTS.path(config.namespace))] == [3]
    pods = kube.list(PODS.path(config.namespace))
    assert sorted(p["spec"]["nodeName"] for p in pods) == [f"{pool}-0", f"{pool}-1"]
    assert proxy.count("PATCH", "/pods/") == 4  # two lost answers, two retries, one pod each


def test_conflict_on_hpa_is_recomputed_from_a_fresh_read(
    faulty: KubeClient, kube: KubeClient, config: ActuatorConfig, proxy: FaultProxy
) -> None:
    deployment(kube, config.namespace)
    hpa_path = hpa(kube, config.namespace, "llama", min_replicas=2)

    def someone_else_writes() -> None:
        # A GitOps controller bumps minReplicas between prewarm's read and write.
        kube.merge_patch(
            hpa_path, {"spec": {"minReplicas": 3}}, field_manager="argocd", dry_run=False
        )

    proxy.faults.append(
        Fault("PATCH", "/horizontalpodautoscalers/", action="hook", hook=someone_else_writes)
    )

    result = ReplicaFloors(faulty, config).raise_floor(floor(config.namespace, 5), now_s=NOW)

    assert proxy.count("PATCH", "/horizontalpodautoscalers/", status=409) == 1
    assert result.value == 5
    raised = get(kube, hpa_path)
    assert raised["spec"]["minReplicas"] == 5
    # The original is the value at the time of the successful write: argocd's 3, not the stale 2.
    assert raised["metadata"]["annotations"][ORIGINAL_MIN] == "3"


def test_failed_scale_after_record_leaves_record_not_raise(
    faulty: KubeClient, kube: KubeClient, config: ActuatorConfig, proxy: FaultProxy
) -> None:
    dep_path = deployment(kube, config.namespace, replicas=1)
    proxy.faults.append(Fault("PATCH", "/deployments/llama/scale", status=503, times=100))

    with pytest.raises(TemporaryError):
        ReplicaFloors(faulty, config).raise_floor(floor(config.namespace, 4), now_s=NOW)

    half = get(kube, dep_path)
    assert half["spec"]["replicas"] == 1  # not raised...
    assert half["metadata"]["annotations"][ORIGINAL_REPLICAS] == "1"  # ...but recorded
    proxy.faults.clear()

    ReplicaFloors(faulty, config).raise_floor(floor(config.namespace, 4), now_s=NOW)  # next tick
    assert get(kube, dep_path)["spec"]["replicas"] == 4
    ReplicaFloors(faulty, config).reconcile([], now_s=NOW)
    assert get(kube, dep_path)["spec"]["replicas"] == 1


def test_apiserver_restart_mid_operation(
    plane: ControlPlane, kube: KubeClient, config: ActuatorConfig, proxy: FaultProxy
) -> None:
    dep_path = deployment(kube, config.namespace, replicas=1)
    restarted = threading.Event()

    def restart_now() -> None:
        # The apiserver goes down right after prewarm recorded the original, before /scale.
        plane.stop_apiserver()

        def bring_back() -> None:
            time.sleep(1.0)
            plane.start_apiserver()
            restarted.set()

        threading.Thread(target=bring_back, daemon=True).start()

    proxy.faults.append(Fault("PATCH", "/deployments/llama/scale", action="hook", hook=restart_now))
    patient = KubeClient(
        plane.token_client("unused", host=proxy.url),
        RetryConfig(attempts=60, initial_backoff_s=0.2, max_backoff_s=1.0),
    )

    result = ReplicaFloors(patient, config).raise_floor(floor(config.namespace, 4), now_s=NOW)

    assert restarted.wait(60)
    assert result.value == 4
    raised = get(kube, dep_path)
    assert raised["spec"]["replicas"] == 4
    assert raised["metadata"]["annotations"][ORIGINAL_REPLICAS] == "1"
    assert proxy.count("PATCH", "/deployments/llama/scale", status=0) >= 1
    # The session's admin clients keep working against the restarted apiserver.
    wait_for(lambda: kube.get(dep_path) is not None, what="apiserver answering again")


def test_conflict_on_scale_records_the_operators_change(
    faulty: KubeClient, kube: KubeClient, config: ActuatorConfig, proxy: FaultProxy
) -> None:
    dep_path = deployment(kube, config.namespace, replicas=1)

    def operator_scales() -> None:
        # Between prewarm's record and its /scale, someone scales the Deployment by hand.
        kube.merge_patch(
            dep_path + "/scale", {"spec": {"replicas": 2}}, field_manager="kubectl", dry_run=False
        )

    proxy.faults.append(
        Fault("PATCH", "/deployments/llama/scale", action="hook", hook=operator_scales)
    )

    result = ReplicaFloors(faulty, config).raise_floor(floor(config.namespace, 4), now_s=NOW)

    # The /scale write carried the record's resourceVersion, so it was refused, not blindly applied.
    assert proxy.count("PATCH", "/deployments/llama/scale", status=409) == 1
    assert result.value == 4
    raised = get(kube, dep_path)
    assert raised["spec"]["replicas"] == 4
    # The operator's change is the last one before the floor: it is what the restore puts back.
    assert raised["metadata"]["annotations"][ORIGINAL_REPLICAS] == "2"


def test_list_that_expires_between_pages_starts_over(
    plane: ControlPlane, kube: KubeClient, config: ActuatorConfig, proxy: FaultProxy
) -> None:
    for index in range(5):
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm{index}"}}
        path = f"/api/v1/namespaces/{config.namespace}/configmaps/cm{index}"
        kube.apply(path, body, field_manager="test", dry_run=False)
    # etcd compacted the snapshot a continue token points at: the apiserver answers 410 Gone.
    proxy.faults.append(Fault("GET", "continue=", status=410))
    paged = KubeClient(plane.token_client("unused", host=proxy.url), page_size=2)

    items = paged.list(f"/api/v1/namespaces/{config.namespace}/configmaps")

    assert sorted(item["metadata"]["name"] for item in items) == [f"cm{i}" for i in range(5)]
    assert proxy.count("GET", "continue=", status=410) == 1
