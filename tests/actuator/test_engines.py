"""Sleeping and waking serving engines' replicas: real apiserver and kwok pods, fake engines.

The serving pods are real Pods of a real Deployment on a kwok node (kwok marks them Running and
Ready); each pod's engine is a fake speaking vLLM's (or SGLang's) sleep contract on 127.0.0.1,
found through the pod's ``prewarm.io/engine-address`` annotation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from kubernetes import client as k8s_client

from actuator.apply import Actuator
from actuator.config import ActuatorConfig
from actuator.engines import ENGINE_ADDRESS_ANNOTATION, Engines
from actuator.kube import DEPLOYMENTS, PODS, KubeClient
from actuator.observer import KubeClusterObserver
from common.ids import ModelId, PoolName
from planner.actions import EngineSleep, WarmPlan, WorkloadRef
from planner.catalog import Catalog, ModelSpec
from planner.engines import EngineSpec
from planner.leadtime import Stage
from tests.harness.fake_engine import FakeEngine, fake_engine
from tests.harness.k8s import make_kwok_nodes, wait_for
from tests.harness.workloads import apply_pod, deployment, pod_body

pytestmark = [pytest.mark.k8s]

MODEL = ModelId("sleepy")


def _catalog(namespace: str, pool: str, kind: str = "vllm") -> Catalog:
    spec = ModelSpec(
        model=MODEL,
        weights_gb=16.0,
        image="vllm/vllm-openai:v0.9",
        image_gb=10.0,
        replica_rps=1.0,
        compile_s=60.0,
        node_pool=PoolName(pool),
        workload=WorkloadRef(namespace, str(MODEL)),
        engine=EngineSpec(kind="vllm" if kind == "vllm" else "sglang", port=8000),
    )
    return Catalog({MODEL: spec})


@pytest.fixture
def engines_and_pods(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str, kube: KubeClient
) -> Iterator[tuple[list[FakeEngine], Catalog]]:
    namespace = k8s_namespace
    pool = f"eng-{namespace}"
    (node,) = make_kwok_nodes(k8s_api, pool=pool, count=1, gpus=2)
    deployment(kube, namespace, str(MODEL), replicas=2)
    with ExitStack() as stack:
        fakes = [stack.enter_context(fake_engine(wake_s=0.3)) for _ in range(2)]
        for index, fake in enumerate(fakes):
            body = pod_body(f"sleepy-{index}", namespace=namespace, image="vllm/vllm-openai:v0.9",
                            node=node, labels={"app": str(MODEL)})  # fmt: skip
            body["metadata"]["annotations"] = {ENGINE_ADDRESS_ANNOTATION: fake.address}
            apply_pod(kube, body)
        engines = Engines(kube, _catalog(namespace, pool))
        wait_for(lambda: len(engines.pods(MODEL)) == 2, what="both serving pods Ready")
        # What the Deployment controller (not running here) would report.
        kube.merge_patch(
            DEPLOYMENTS.path(namespace, str(MODEL), sub="status"),
            {"status": {"replicas": 2, "readyReplicas": 2}},
            field_manager="test",
            dry_run=False,
        )
        yield fakes, _catalog(namespace, pool)


def _plan(namespace: str, *, asleep: bool) -> WarmPlan:
    action = EngineSleep(MODEL, WorkloadRef(namespace, str(MODEL)), asleep, "test", 0.0)
    return WarmPlan(now_s=0.0, actions=(action,))


async def test_replicas_sleep_and_wake_through_the_actuator(
    engines_and_pods: tuple[list[FakeEngine], Catalog],
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_namespace: str,
) -> None:
    fakes, catalog = engines_and_pods
    engines = Engines(kube, catalog)
    actuator = Actuator(kube, config, engines=engines)
    observer = KubeClusterObserver(kube, config=config, catalog=catalog, engines=engines)
    try:
        (slept,) = await actuator.apply(_plan(k8s_namespace, asleep=True))
        assert (slept.result, slept.detail) == ("ok", "2 pod(s) made asleep, 0 already")
        assert all(f.asleep and f.level == 1 for f in fakes)
        assert all("POST /sleep?level=1" in f.calls for f in fakes)
        snapshot = await observer.observe(now_s=0.0, models=[MODEL])
        assert snapshot.models[MODEL].asleep_replicas == 2
        # Applying the same plan again changes nothing.
        (again,) = await actuator.apply(_plan(k8s_namespace, asleep=True))
        assert again.detail == "0 pod(s) made asleep, 2 already"
        assert sum(c.startswith("POST /sleep") for f in fakes for c in f.calls) == 2

        (woken,) = await actuator.apply(_plan(k8s_namespace, asleep=False))
        assert (woken.result, woken.detail) == ("ok", "2 pod(s) made awake, 0 already")
        assert not any(f.asleep for f in fakes)
        snapshot = await observer.observe(now_s=0.0, models=[MODEL])
        assert snapshot.models[MODEL].asleep_replicas == 0
        wakes = [o for o in snapshot.stage_observations if o.stage is Stage.WAKE]
        assert [o.key for o in wakes] == [str(MODEL), str(MODEL)]
        assert all(0.3 <= o.seconds < 3.0 for o in wakes)  # the fake takes 0.3 s to wake
    finally:
        await observer.close()


async def test_an_engine_that_does_not_answer_fails_only_its_pod(
    engines_and_pods: tuple[list[FakeEngine], Catalog],
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_namespace: str,
) -> None:
    fakes, catalog = engines_and_pods
    # The second pod's engine address now points at a closed port.
    path = PODS.path(k8s_namespace, "sleepy-1")
    annotations = {ENGINE_ADDRESS_ANNOTATION: "127.0.0.1:1"}
    kube.merge_patch(
        path, {"metadata": {"annotations": annotations}}, field_manager="test", dry_run=False
    )
    actuator = Actuator(kube, config, engines=Engines(kube, catalog))
    (result,) = await actuator.apply(_plan(k8s_namespace, asleep=True))
    assert result.result == "error"
    assert result.detail.startswith("1 pod(s) made asleep, 0 already; pod ")
    assert "sleepy-1" in result.detail
    assert fakes[0].asleep


async def test_dry_run_calls_nothing(
    engines_and_pods: tuple[list[FakeEngine], Catalog],
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_namespace: str,
) -> None:
    fakes, catalog = engines_and_pods
    actuator = Actuator(kube, config, engines=Engines(kube, catalog))
    (result,) = await actuator.apply(_plan(k8s_namespace, asleep=True), dry_run=True)
    assert (result.result, result.detail) == ("dry_run", "2 pod(s) made asleep, 0 already")
    assert not any(f.asleep for f in fakes)
    assert not any(c.startswith("POST") for f in fakes for c in f.calls)
