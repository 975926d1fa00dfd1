"""A whole WarmPlan on a real apiserver: applied twice (idempotent), then released."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

from actuator.apply import Actuator
from actuator.config import ActuatorConfig, MachineDeploymentRef, PoolConfig
from actuator.floors import ORIGINAL_REPLICAS
from actuator.kube import DEPLOYMENTS, PODS, KubeClient
from common.ids import ModelId, NodeName, PoolName
from planner.actions import (
    ImagePrepull,
    NodeCapacity,
    Preload,
    ReplicaFloor,
    Tier,
    WarmPlan,
    WorkloadRef,
)
from tests.harness.k8s import make_kwok_nodes, make_namespace, wait_for
from tests.harness.workloads import deployment, get

pytestmark = pytest.mark.k8s

NOW = 1_800_000_000.0


def test_plan_applied_idempotently_then_released(
    kube: KubeClient, config: ActuatorConfig, k8s_api: k8s_client.ApiClient
) -> None:
    pool = f"apply-{config.namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=2)
    apps = f"{config.namespace}-apps"
    make_namespace(k8s_api, apps)
    dep_path = deployment(kube, apps, replicas=1)
    plan = WarmPlan(
        now_s=NOW,
        actions=(
            NodeCapacity(PoolName(pool), 4, "spike at 09:00", 100.0),
            ImagePrepull(PoolName(pool), "vllm/vllm-openai:v0.9", NOW + 600, "r", 50.0),
            ReplicaFloor(ModelId("llama"), WorkloadRef(apps, "llama"), 3, NOW + 900, "r", 80.0),
        ),
    )
    actuator = Actuator(kube, config)

    first = actuator.apply_cluster(plan)
    assert first.ok, first.errors
    wait_for(
        lambda: actuator.apply_cluster(plan).prepulls[0].done, what="pre-pull done", timeout_s=60
    )
    versions = {
        path: get(kube, path)["metadata"]["resourceVersion"]
        for path in (dep_path, DEPLOYMENTS.path(config.namespace, f"prewarm-placeholder-{pool}"))
    }
    again = actuator.apply_cluster(plan)  # same plan: nothing changes, nothing is duplicated

    assert again.ok
    assert not any(result.changed for result in again.capacity + again.floors)
    assert {p: get(kube, p)["metadata"]["resourceVersion"] for p in versions} == versions
    assert get(kube, dep_path)["spec"]["replicas"] == 3

    released = actuator.apply_cluster(WarmPlan(now_s=NOW + 1000, actions=()))

    assert released.ok
    assert kube.list(DEPLOYMENTS.path(config.namespace)) == []
    wait_for(lambda: kube.list(PODS.path(config.namespace)) == [], what="no pre-pull pods")
    restored = get(kube, dep_path)
    assert restored["spec"]["replicas"] == 1
    assert ORIGINAL_REPLICAS not in (restored["metadata"].get("annotations") or {})


async def test_one_result_per_action(
    kube: KubeClient, config: ActuatorConfig, k8s_api: k8s_client.ApiClient
) -> None:
    pool = f"res-{config.namespace}"
    make_kwok_nodes(k8s_api, pool=pool, count=1)
    md = MachineDeploymentRef(namespace=config.namespace, name="md")
    config = config.model_copy(update={"pools": {"capi": PoolConfig(machine_deployment=md)}})
    preload = Preload(ModelId("m"), NodeName(f"{pool}-0"), Tier.GPU, 1, NOW + 60, 1.0, "r", 1.0)
    plan = WarmPlan(
        now_s=NOW,
        actions=(
            NodeCapacity(PoolName(pool), 1, "r", 1.0),
            NodeCapacity(PoolName("capi"), 8, "r", 1.0),
            ImagePrepull(PoolName(pool), "unpullable.invalid/x:1", NOW + 60, "r", 1.0),
            ReplicaFloor(
                ModelId("m"), WorkloadRef(config.namespace, "gone"), 2, NOW + 60, "r", 1.0
            ),
            preload,
        ),
    )

    dry = await Actuator(kube, config).apply(plan, dry_run=True)
    assert [r.result for r in dry] == ["dry_run", "skipped", "dry_run", "error", "skipped"]
    assert "does not exist" in dry[3].detail  # the floor's workload is missing: said so

    results = await Actuator(kube, config).apply(plan)

    assert [r.action for r in results] == list(plan.actions)
    assert results[0].result == "ok"
    assert results[0].detail == f"deployment/prewarm-placeholder-{pool} at 1"
    assert results[1].detail == "Cluster API is not installed"
    assert results[3].result == "error"
