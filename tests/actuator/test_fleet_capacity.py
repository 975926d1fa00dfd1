"""Capacity that fits a real fleet (issue 19), on the real apiserver with kwok nodes and the REAL
Karpenter CRDs (``tests/harness/crds.py``; no Karpenter controller runs, so no node is launched:
the tests assert on what prewarm reads and writes).

- a Karpenter NodePool with no node is a known pool (0 free GPUs) and the plan's lead time of its
  models counts the node's provisioning;
- placeholders are shaped like one replica of the model's workload: a 4-GPU replica is one pod
  requesting 4 GPUs, with the template's tolerations, nodeSelector, affinity and spread;
- a NodePool's ``spec.limits`` cap the placeholders, counting the capacity of its current nodes;
- the placeholders' PriorityClass is checked against the cluster autoscaler's cut-off;
- bad input (a template without resources, malformed NodePool limits, a missing workload, a
  missing PriorityClass) is a clear error or note for that part only: the rest goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from actuator.capacity import PRIORITY_CLASSES, NodeCapacityActuator
from actuator.config import ActuatorConfig, PlaceholderConfig
from actuator.kube import DEPLOYMENTS, KubeClient, Obj
from actuator.nodepools import NODE_POOLS, NodePoolReader
from actuator.observer import KubeClusterObserver
from actuator.placeholder_shapes import workload_shape
from common.errors import FailedPrecondition, InvalidInput, NotFound
from common.ids import ModelId, PoolName
from planner.actions import NodeCapacity, ReplicaDemand, WorkloadRef
from planner.catalog import Catalog
from planner.config import PlannerConfig
from planner.planner import PlannerState, plan
from tests.harness.crds import KARPENTER_NODE_CLAIMS, KARPENTER_NODE_POOLS, real_crds
from tests.harness.helm import CHART, helm
from tests.harness.k8s import make_kwok_nodes, make_namespace
from tests.harness.workloads import deployment_body, get
from tests.planner.helpers import context, forecast, spec

pytestmark = [pytest.mark.k8s, pytest.mark.acceptance_fleet]

KARPENTER_LABEL = "karpenter.sh/nodepool"
GPU = "nvidia.com/gpu"
MODEL = ModelId("llama-70b")


@pytest.fixture
def karpenter(kube: KubeClient) -> Iterator[None]:
    """Karpenter's real NodePool and NodeClaim CRDs, for one test."""
    with real_crds(kube, KARPENTER_NODE_POOLS, KARPENTER_NODE_CLAIMS):
        yield


@pytest.fixture
def priority_class(kube: KubeClient, k8s_namespace: str) -> Iterator[str]:
    """A PriorityClass name of this test's own (they are cluster-wide), deleted afterwards."""
    name = f"pc-{k8s_namespace}"
    yield name
    kube.delete(PRIORITY_CLASSES.path(None, name), dry_run=False)


def make_priority_class(kube: KubeClient, name: str, value: int) -> None:
    kube.delete(PRIORITY_CLASSES.path(None, name), dry_run=False)
    body = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": value,
        "preemptionPolicy": "Never",
    }
    kube.create(PRIORITY_CLASSES.path(), body, dry_run=False)


def node_pool(
    kube: KubeClient,
    name: str,
    *,
    limits: dict[str, Any] | None = None,
    gpus_per_node: int | None = None,
    gpu_memory_mib: int | None = None,
) -> None:
    """A karpenter.sh/v1 NodePool as a user applies it (validated by the real CRD schema)."""
    requirements: list[Obj] = [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}
    ]
    if gpus_per_node is not None:
        requirements.append(
            {"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "In",
             "values": ["1", str(gpus_per_node)]}
        )  # fmt: skip
    if gpu_memory_mib is not None:
        requirements.append(
            {"key": "karpenter.k8s.aws/instance-gpu-memory", "operator": "In",
             "values": [str(gpu_memory_mib)]}
        )  # fmt: skip
    spec: Obj = {
        "template": {
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                 "name": "default"},
                "requirements": requirements,
                "taints": [{"key": GPU, "value": "true", "effect": "NoSchedule"}],
            }
        }
    }  # fmt: skip
    if limits is not None:
        spec["limits"] = limits
    body = {"apiVersion": "karpenter.sh/v1", "kind": "NodePool",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip
    kube.apply(NODE_POOLS.path(None, name), body, field_manager="kubectl", dry_run=False)


def four_gpu_deployment(kube: KubeClient, namespace: str, name: str) -> WorkloadRef:
    """A serving Deployment whose replica needs 4 GPUs on one node, with a real fleet's
    scheduling constraints."""
    body = deployment_body(name, namespace=namespace)
    pod = body["spec"]["template"]["spec"]
    pod["containers"][0]["resources"] = {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {GPU: "4", "memory": "64Gi"},
    }
    pod["initContainers"] = [
        {"name": "fetch", "image": "busybox:1.37", "resources": {"requests": {"cpu": "12"}}}
    ]
    pod["tolerations"] = [
        {"key": GPU, "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"},
    ]
    pod["nodeSelector"] = {"karpenter.k8s.aws/instance-family": "p5"}
    pod["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "karpenter.sh/capacity-type", "operator": "In",
                         "values": ["on-demand"]}
                    ]}
                ]
            }
        }
    }  # fmt: skip
    pod["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
         "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": name}}}
    ]  # fmt: skip
    path = DEPLOYMENTS.path(namespace, name)
    kube.apply(path, body, field_manager="kubectl", dry_run=False)
    return WorkloadRef(namespace, name)


def apps(k8s_api: k8s_client.ApiClient, k8s_namespace: str) -> str:
    namespace = f"{k8s_namespace}-apps"
    make_namespace(k8s_api, namespace)
    return namespace


def karpenter_config(config: ActuatorConfig, priority_class: str) -> ActuatorConfig:
    return config.model_copy(
        update={
            "pool_label": KARPENTER_LABEL,
            "placeholder": PlaceholderConfig(priority_class=priority_class),
        }
    )


def capacity(pool: str, *demands: ReplicaDemand) -> NodeCapacity:
    gpus = sum(d.replicas * d.gpus_per_replica for d in demands)
    return NodeCapacity(PoolName(pool), gpus, "spike at 09:00", float(gpus), demands=demands)


def placeholder_pods(kube: KubeClient, namespace: str) -> dict[str, Obj]:
    """The placeholder Deployments of ``namespace`` by name."""
    found = kube.list(
        DEPLOYMENTS.path(namespace),
        label_selector="app.kubernetes.io/component=capacity-placeholder",
    )
    return {item["metadata"]["name"]: item for item in found}


# ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("karpenter")
def test_a_node_pool_with_zero_nodes_is_a_known_pool_with_a_node_lead_time(
    kube: KubeClient, config: ActuatorConfig, k8s_namespace: str
) -> None:
    pool = f"gpu-{k8s_namespace}"
    node_pool(kube, pool, gpus_per_node=8, gpu_memory_mib=81920)
    config = config.model_copy(update={"pool_label": KARPENTER_LABEL})
    model = spec(str(MODEL), node_pool=PoolName(pool), weights_gb=140.0)
    observer = KubeClusterObserver(kube, config=config, catalog=Catalog({MODEL: model}))

    snapshot = asyncio.run(observer.observe(now_s=0.0, models=[MODEL]))

    assert PoolName(pool) in snapshot.pools
    state = snapshot.pools[PoolName(pool)]
    assert state.free_gpus == 0
    assert state.gpu_memory_bytes == 81920 * 1024 * 1024  # from the NodePool's requirement
    assert not [n for n in snapshot.nodes if n.pool == pool]
    assert NodePoolReader(kube, config).read()[PoolName(pool)].gpus_per_node == 8

    # The plan: the model's lead counts a node's provisioning (a pool not known would not).
    busy = {str(MODEL): forecast(str(MODEL), p_active=0.9, rate_rps=5.0)}
    known = plan(context([model], forecasts=busy, pools=dict(snapshot.pools)), PlannerState())
    unknown = plan(context([model], forecasts=busy, pools={}), PlannerState())
    node_s = PlannerConfig().stages.node_provision_s
    assert node_s > 0
    # Both start from remote weights and an uncached image; only the node differs.
    assert known.models[MODEL].lead_s - unknown.models[MODEL].lead_s == pytest.approx(node_s)
    held = known.plan.of_type(NodeCapacity)
    assert [(c.pool, [d.model for d in c.demands]) for c in held] == [(pool, [MODEL])]


def test_without_karpenter_node_pools_are_no_error(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    config = config.model_copy(update={"pool_label": KARPENTER_LABEL})
    assert NodePoolReader(kube, config).read() == {}
    model = spec(str(MODEL), node_pool=PoolName("nowhere"))
    observer = KubeClusterObserver(kube, config=config, catalog=Catalog({MODEL: model}))
    snapshot = asyncio.run(observer.observe(now_s=0.0, models=[MODEL]))
    assert PoolName("nowhere") not in snapshot.pools


@pytest.mark.usefixtures("karpenter")
def test_placeholders_copy_a_four_gpu_replica_as_one_pod_per_replica(
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    priority_class: str,
) -> None:
    make_priority_class(kube, priority_class, -10)
    ref = four_gpu_deployment(kube, apps(k8s_api, k8s_namespace), "llama")
    pool = f"p5-{k8s_namespace}"
    node_pool(kube, pool, gpus_per_node=8)
    config = karpenter_config(config, priority_class)
    actuator = NodeCapacityActuator(kube, config)

    results = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 2, 4))])

    assert [r.error for r in results] == [None]
    assert results[0].replicas == 2
    deployments = placeholder_pods(kube, config.namespace)
    assert list(deployments) == [actuator.placeholders.workload_name(PoolName(pool), ref)]
    (deployment,) = deployments.values()
    assert deployment["spec"]["replicas"] == 2  # one placeholder pod per replica
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # One pod holds all 4 GPUs of a replica, so they are held on one node.
    assert container["resources"]["limits"] == {GPU: "4"}
    requests = container["resources"]["requests"]
    assert requests[GPU] == "4"
    assert requests["cpu"] == "12"  # the init container's 12 cores outweigh the 8 of the server
    assert requests["memory"] == str(64 * 1024**3)
    assert container["image"] == "registry.k8s.io/pause:3.10"
    assert pod["priorityClassName"] == priority_class
    assert pod["tolerations"] == [
        {"key": GPU, "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"},
    ]
    assert pod["nodeSelector"] == {
        "karpenter.k8s.aws/instance-family": "p5",
        KARPENTER_LABEL: pool,
    }
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["on-demand"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert deployment["metadata"]["annotations"]["prewarm.io/shaped-from"] == (
        f"Deployment/{ref.namespace}/llama"
    )

    # The API server admits a pod of this shape (the PriorityClass resolves; the spec is valid).
    metadata = {"name": "shape-check", "namespace": config.namespace}
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod}
    admitted = kube.create(f"/api/v1/namespaces/{config.namespace}/pods", body, dry_run=True)
    assert admitted["spec"]["priority"] == -10

    # Idempotent, then released when no longer planned.
    again = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 2, 4))])
    assert not again[0].changed
    actuator.reconcile([])
    assert placeholder_pods(kube, config.namespace) == {}


@pytest.mark.usefixtures("karpenter")
def test_node_pool_limits_cap_the_placeholders(
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    priority_class: str,
) -> None:
    make_priority_class(kube, priority_class, -5)
    ref = four_gpu_deployment(kube, apps(k8s_api, k8s_namespace), "llama")
    pool = f"lim-{k8s_namespace}"
    # 24 GPUs at most; one node of 8 GPUs (and 64 CPUs) already runs: 16 GPUs left for new nodes.
    node_pool(kube, pool, limits={GPU: "24", "cpu": "1000"}, gpus_per_node=8)
    make_kwok_nodes(k8s_api, pool=pool, count=1, gpus=8, pool_label=KARPENTER_LABEL)
    config = karpenter_config(config, priority_class)
    actuator = NodeCapacityActuator(kube, config)

    (result,) = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 6, 4))])

    assert result.error is None
    assert result.replicas == 4  # 16 GPUs left / 4 per replica, not the 6 asked for
    assert "NodePool limits" in result.notes
    (deployment,) = placeholder_pods(kube, config.namespace).values()
    assert deployment["spec"]["replicas"] == 4

    # A CPU limit binds too: 64 CPUs on the node, 100 allowed: 36 left, 12 per placeholder pod.
    node_pool(kube, pool, limits={GPU: "24", "cpu": "100"}, gpus_per_node=8)
    (result,) = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 6, 4))])
    assert result.replicas == 3

    # A node-count limit: one node exists, two allowed: one more 8-GPU node holds two replicas.
    node_pool(kube, pool, limits={"nodes": "2"}, gpus_per_node=8)
    (result,) = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 6, 4))])
    assert result.replicas == 2

    # Limits already used up: nothing is placed, and nothing is an error.
    node_pool(kube, pool, limits={GPU: "8"}, gpus_per_node=8)
    (result,) = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 6, 4))])
    assert (result.error, result.replicas) == (None, 0)
    assert placeholder_pods(kube, config.namespace) == {}


@pytest.mark.usefixtures("karpenter")
def test_a_replica_larger_than_the_pools_nodes_is_an_error(
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    priority_class: str,
) -> None:
    make_priority_class(kube, priority_class, -10)
    ref = four_gpu_deployment(kube, apps(k8s_api, k8s_namespace), "llama")
    pool = f"small-{k8s_namespace}"
    node_pool(kube, pool, gpus_per_node=2)
    actuator = NodeCapacityActuator(kube, karpenter_config(config, priority_class))

    (result,) = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 1, 4))])

    assert isinstance(result.error, InvalidInput)
    assert "needs 4 GPUs on one node but nodes of pool" in str(result.error)
    assert placeholder_pods(kube, config.namespace) == {}


@pytest.mark.usefixtures("karpenter")
def test_bad_input_is_a_clear_error_and_the_rest_of_the_fleet_goes_on(
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    priority_class: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="actuator")
    make_priority_class(kube, priority_class, -10)
    namespace = apps(k8s_api, k8s_namespace)
    good = four_gpu_deployment(kube, namespace, "good")
    bare = WorkloadRef(namespace, "bare")  # a template with no resources at all
    kube.apply(
        DEPLOYMENTS.path(namespace, "bare"),
        deployment_body("bare", namespace=namespace),
        field_manager="kubectl",
        dry_run=False,
    )
    missing = WorkloadRef(namespace, "missing")
    ok_pool, bad_pool = f"ok-{k8s_namespace}", f"bad-{k8s_namespace}"
    node_pool(kube, ok_pool)
    # Well-formed for the CRD's pattern, meaningless as a limit: below zero, half a GPU.
    node_pool(kube, bad_pool, limits={GPU: "-4", "cpu": "2.5"})
    config = karpenter_config(config, priority_class)
    actuator = NodeCapacityActuator(kube, config)

    results = actuator.reconcile(
        [
            capacity(
                ok_pool,
                ReplicaDemand(ModelId("good"), good, 1, 4),
                ReplicaDemand(ModelId("bare"), bare, 2, 1),
                ReplicaDemand(ModelId("missing"), missing, 1, 1),
            ),
            capacity(bad_pool, ReplicaDemand(ModelId("good"), good, 1, 4)),
        ]
    )

    by_pool = {r.pool: r for r in results}
    bad = by_pool[PoolName(bad_pool)]
    assert isinstance(bad.error, InvalidInput)
    assert f"NodePool {bad_pool}: spec.limits['nvidia.com/gpu'] is '-4', below 0" in str(bad.error)
    ok = by_pool[PoolName(ok_pool)]
    # The missing workload is an error naming it; the others are held.
    assert isinstance(ok.error, InvalidInput)
    assert f"Deployment {namespace}/missing does not exist" in str(ok.error)
    assert "bare" in ok.notes
    assert "requests no whole number of nvidia.com/gpu" in ok.notes
    assert any("requests no whole number" in r.getMessage() for r in caplog.records)
    deployments = placeholder_pods(kube, config.namespace)
    shaped = actuator.placeholders.workload_name(PoolName(ok_pool), good)
    assert set(deployments) == {shaped, f"prewarm-placeholder-{ok_pool}"}
    # The bare workload's GPUs are held in the pool's own shape: 2 replicas x 1 GPU.
    fallback = deployments[f"prewarm-placeholder-{ok_pool}"]
    assert fallback["spec"]["replicas"] == 2
    requests = fallback["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests == {GPU: "1", "cpu": "10m", "memory": str(16 * 1024**2)}
    assert deployments[shaped]["spec"]["replicas"] == 1

    with pytest.raises(InvalidInput, match=r"requests no whole number of nvidia\.com/gpu"):
        workload_shape(get(kube, DEPLOYMENTS.path(namespace, "bare")), bare)
    with pytest.raises(NotFound):
        actuator.placeholders._shape(ReplicaDemand(ModelId("missing"), missing, 1, 1))


@pytest.mark.usefixtures("karpenter")
def test_priority_class_is_checked_against_the_expendable_cutoff(
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    priority_class: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="actuator")
    ref = four_gpu_deployment(kube, apps(k8s_api, k8s_namespace), "llama")
    pool = f"pc-{k8s_namespace}"
    config = karpenter_config(config, priority_class)
    actuator = NodeCapacityActuator(kube, config)
    wanted = [capacity(pool, ReplicaDemand(MODEL, ref, 1, 4))]

    # Missing: reported clearly (at start-up too); the Deployment is still applied, since the
    # ReplicaSet controller creates its pods once the class exists.
    problem = actuator.check_at_start()
    assert problem is not None
    assert f"PriorityClass {priority_class} does not exist" in problem
    assert any("does not exist" in r.getMessage() for r in caplog.records)
    (result,) = actuator.reconcile(wanted)
    assert result.error is None
    assert result.replicas == 1

    # Below the cluster autoscaler's cut-off (-10; it ignores priority < cutoff): refused.
    make_priority_class(kube, priority_class, -11)
    (result,) = actuator.reconcile(wanted)
    assert isinstance(result.error, FailedPrecondition)
    assert "below the cluster autoscaler's --expendable-pods-priority-cutoff -10" in str(
        result.error
    )
    assert "[-10, -1]" in str(result.error)
    assert placeholder_pods(kube, config.namespace)  # the existing placeholders are kept

    # Not negative: real pods would not preempt the placeholders.
    make_priority_class(kube, priority_class, 0)
    assert "would not preempt" in str(actuator.priority_class_problem())

    # Exactly at the cut-off is allowed (not below it), and so is a lower cut-off configured.
    make_priority_class(kube, priority_class, -10)
    assert actuator.priority_class_problem() is None
    make_priority_class(kube, priority_class, -50)
    lower = config.model_copy(
        update={
            "placeholder": PlaceholderConfig(
                priority_class=priority_class, expendable_priority_cutoff=-100
            )
        }
    )
    assert NodeCapacityActuator(kube, lower).priority_class_problem() is None
    actuator.reconcile([])


def test_chart_refuses_a_priority_below_the_expendable_cutoff() -> None:
    below = helm("template", "r", str(CHART), "--set", "placeholder.priority=-11")
    assert below.returncode != 0
    assert "below placeholder.expendablePodsPriorityCutoff -10" in below.stderr
    lowered = helm(
        "template", "r", str(CHART),
        "--set", "placeholder.priority=-50",
        "--set", "placeholder.expendablePodsPriorityCutoff=-100",
    )  # fmt: skip
    assert lowered.returncode == 0, lowered.stderr
    assert "expendable_priority_cutoff: -100" in lowered.stdout
    positive = helm("template", "r", str(CHART), "--set", "placeholder.priority=0")
    assert positive.returncode != 0  # values.schema.json: maximum -1


def test_a_statefulset_replica_is_copied_too(
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    priority_class: str,
) -> None:
    make_priority_class(kube, priority_class, -1)
    namespace = apps(k8s_api, k8s_namespace)
    body = deployment_body("sts", namespace=namespace)
    body["kind"] = "StatefulSet"
    body["spec"]["serviceName"] = "sts"
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {GPU: "2"}}
    kube.apply(
        f"/apis/apps/v1/namespaces/{namespace}/statefulsets/sts",
        body,
        field_manager="kubectl",
        dry_run=False,
    )
    ref = WorkloadRef(namespace, "sts", kind="StatefulSet")
    pool = f"sts-{k8s_namespace}"
    actuator = NodeCapacityActuator(kube, karpenter_config(config, priority_class))

    (result,) = actuator.reconcile([capacity(pool, ReplicaDemand(MODEL, ref, 3, 1))])

    assert result.error is None
    (deployment,) = placeholder_pods(kube, config.namespace).values()
    assert deployment["spec"]["replicas"] == 3
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {GPU: "2"}  # the template's 2 GPUs, not the planner's 1
    actuator.reconcile([])
