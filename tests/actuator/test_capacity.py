"""Node capacity on a real apiserver: placeholder Deployments and MachineDeployment /scale."""

from __future__ import annotations

from typing import Any

import pytest

from actuator.capacity import NodeCapacityActuator, PlaceholderCapacity
from actuator.config import ActuatorConfig, MachineDeploymentRef, PlaceholderConfig, PoolConfig
from actuator.kube import DEPLOYMENTS, KubeClient
from actuator.machine_deployments import ORIGINAL_REPLICAS, MachineDeploymentCapacity
from common.ids import PoolName
from planner.actions import NodeCapacity
from tests.harness.workloads import get, machine_deployment

pytestmark = pytest.mark.k8s


def capacity(pool: str, gpus: int) -> NodeCapacity:
    return NodeCapacity(pool=PoolName(pool), gpus=gpus, reason="spike at 09:00", value=120.0)


def test_placeholder_deployment_holds_gpus_in_the_pool(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    config = config.model_copy(update={"placeholder": PlaceholderConfig(gpus_per_pod=2)})
    placeholders = PlaceholderCapacity(kube, config)

    result = placeholders.apply(capacity("a100", 5))

    assert result.changed
    assert result.replicas == 3  # ceil(5 / 2)
    deployment = get(kube, DEPLOYMENTS.path(config.namespace, "prewarm-placeholder-a100"))
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "prewarm"
    managers = {entry["manager"] for entry in deployment["metadata"]["managedFields"]}
    assert managers == {"prewarm"}
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert pod["priorityClassName"] == "prewarm-placeholder"
    assert pod["nodeSelector"] == {"prewarm.io/pool": "a100"}
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["nvidia.com/gpu"] == "2"


def test_apply_is_idempotent_and_resizes(kube: KubeClient, config: ActuatorConfig) -> None:
    placeholders = PlaceholderCapacity(kube, config)
    placeholders.apply(capacity("h100", 4))
    path = DEPLOYMENTS.path(config.namespace, "prewarm-placeholder-h100")
    first = kube.get(path)

    again = placeholders.apply(capacity("h100", 4))
    second = kube.get(path)

    assert not again.changed
    assert first is not None
    assert second is not None
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    resized = placeholders.apply(capacity("h100", 6))
    assert resized.changed
    third = get(kube, path)
    assert third["spec"]["replicas"] == 6
    deployments = kube.list(DEPLOYMENTS.path(config.namespace))
    assert [d["metadata"]["name"] for d in deployments] == ["prewarm-placeholder-h100"]


def test_dry_run_validates_but_creates_nothing(kube: KubeClient, config: ActuatorConfig) -> None:
    placeholders = PlaceholderCapacity(kube, config)

    result = placeholders.apply(capacity("l4", 2), dry_run=True)

    assert result.dry_run
    assert result.replicas == 2
    assert kube.list(DEPLOYMENTS.path(config.namespace)) == []
    dry_config = config.model_copy(update={"dry_run": True})
    PlaceholderCapacity(kube, dry_config).apply(capacity("l4", 2))
    assert kube.list(DEPLOYMENTS.path(config.namespace)) == []


def test_reconcile_releases_pools_no_longer_planned(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    actuator = NodeCapacityActuator(kube, config)
    actuator.reconcile([capacity("a", 1), capacity("b", 2), capacity("b", 3)])
    assert actuator.placeholders.pools() == {"a", "b"}
    b = get(kube, DEPLOYMENTS.path(config.namespace, "prewarm-placeholder-b"))
    assert b["spec"]["replicas"] == 3  # the largest request per pool wins

    actuator.reconcile([capacity("b", 3)], dry_run=True)
    assert actuator.placeholders.pools() == {"a", "b"}  # dry run deleted nothing

    actuator.reconcile([capacity("b", 3)])
    assert actuator.placeholders.pools() == {"b"}

    assert actuator.placeholders.release(PoolName("b"))
    assert not actuator.placeholders.release(PoolName("b"))  # already gone: still fine
    assert actuator.placeholders.pools() == set()


def md_pool(config: ActuatorConfig, **pool: Any) -> tuple[ActuatorConfig, MachineDeploymentRef]:
    """``config`` with pool ``a100`` scaled through the MachineDeployment ``gpu-md``."""
    ref = MachineDeploymentRef(namespace=config.namespace, name="gpu-md")
    pools = {"a100": PoolConfig(machine_deployment=ref, **pool)}
    return config.model_copy(update={"pools": pools}), ref


@pytest.mark.usefixtures("capi_crd")
def test_machine_deployment_scaled_through_scale_and_restored(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    path = machine_deployment(kube, config.namespace, "gpu-md", replicas=2)
    config, _ = md_pool(config, gpus_per_node=8)
    actuator = NodeCapacityActuator(kube, config)

    dry = actuator.reconcile([capacity("a100", 12)], dry_run=True)
    assert dry[0].replicas == 4
    unchanged = get(kube, path)
    assert unchanged["spec"]["replicas"] == 2

    results = actuator.reconcile([capacity("a100", 12)])

    assert results[0].target == f"machinedeployment/{config.namespace}/gpu-md"
    md = get(kube, path)
    assert md["spec"]["replicas"] == 4  # 2 original + ceil(12 / 8)
    assert md["metadata"]["annotations"][ORIGINAL_REPLICAS] == "2"
    assert actuator.placeholders.pools() == set()  # an MD pool gets no placeholders
    rv = md["metadata"]["resourceVersion"]
    assert not actuator.reconcile([capacity("a100", 12)])[0].changed
    md_again = get(kube, path)
    assert md_again["metadata"]["resourceVersion"] == rv

    actuator.reconcile([])

    restored = get(kube, path)
    assert restored["spec"]["replicas"] == 2
    assert ORIGINAL_REPLICAS not in (restored["metadata"].get("annotations") or {})


def test_missing_cluster_api_disables_direct_scaling_with_one_warning(
    kube: KubeClient, config: ActuatorConfig, warnings_of: pytest.LogCaptureFixture
) -> None:
    config, ref = md_pool(config)
    actuator = NodeCapacityActuator(kube, config)

    assert actuator.reconcile([capacity("a100", 8)]) == []
    assert actuator.reconcile([capacity("a100", 8)]) == []
    assert actuator.reconcile([]) == []

    messages = [r.getMessage() for r in warnings_of.records if "Cluster API" in r.getMessage()]
    assert len(messages) == 1
    assert MachineDeploymentCapacity(kube, config).available(ref) is False


@pytest.mark.usefixtures("capi_crd")
def test_machine_deployment_never_lowers_a_count_someone_else_raised(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    path = machine_deployment(kube, config.namespace, "gpu-md", replicas=2)
    config, _ = md_pool(config)
    actuator = NodeCapacityActuator(kube, config)
    actuator.reconcile([capacity("a100", 8)])  # 2 + 1
    # The cluster autoscaler scales the MachineDeployment up while the capacity is held.
    kube.merge_patch(path + "/scale", {"spec": {"replicas": 6}}, field_manager="ca", dry_run=False)

    actuator.reconcile([capacity("a100", 8)])
    md = get(kube, path)
    assert md["spec"]["replicas"] == 6

    actuator.reconcile([])  # restore keeps the autoscaler's count, drops the record
    restored = get(kube, path)
    assert restored["spec"]["replicas"] == 6
    assert ORIGINAL_REPLICAS not in (restored["metadata"].get("annotations") or {})
