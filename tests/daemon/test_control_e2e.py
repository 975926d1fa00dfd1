"""A manual warm request, end to end: CLI-side client -> control API in the daemon -> ConfigMap ->
planner input -> actuator -> the workload's replicas on a real API server, across a restart.

The request raises the floor before its start time (by the model's lead time) and the floor is
restored after its end, although the daemon serving the request is replaced in between.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from kubernetes import client as k8s_client

from actuator.apply import Actuator
from actuator.config import ActuatorConfig, RetryConfig
from actuator.floors import ORIGINAL_REPLICAS
from actuator.kube import DEPLOYMENTS, KubeClient
from actuator.observer import KubeClusterObserver
from common.ids import ModelId
from forecaster.engine import AutoForecaster
from forecaster.types import SeriesBatch
from planner.catalog import Catalog, parse_catalog
from planner.config import PlannerConfig
from prewarm.control.client import ControlClient
from prewarm.control.config import AuthConfig, ControlConfig, Scope, TokenConfig
from prewarm.control.service import ControlServer
from prewarm.control.store import ConfigMapControlStore
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.daemon.replay import ReplaySource
from tests.harness.workloads import deployment_body

pytestmark = pytest.mark.k8s

STEP = 60.0
MODEL = ModelId("chat")
TOKEN = "e2e-write-token-0123456789"
T0 = 1_800_000_000.0  # the test clock's start (epoch seconds)


def _quiet_history() -> SeriesBatch:
    """Two hours of a model that gets no traffic: any floor comes from the manual request."""
    counts = np.zeros((1, 120))
    return SeriesBatch(models=(MODEL,), start_s=T0 - 7200, step_s=STEP, counts=counts)


def _catalog(namespace: str) -> Catalog:
    return parse_catalog(
        f"""
models:
  chat:
    weights_gb: 16
    image: registry.example.com/chat:v1
    image_gb: 5
    replica_rps: 5
    compile_s: 30
    node_pool: {namespace}-pool
    workload: {{namespace: {namespace}, name: chat}}
"""
    )


class Process:
    """One daemon 'process': daemon + control server, sharing only the cluster with the next."""

    def __init__(self, api: k8s_client.ApiClient, namespace: str, clock: list[float]) -> None:
        retry = RetryConfig(attempts=4, initial_backoff_s=0.05, max_backoff_s=0.5)
        kube = KubeClient(api, retry)
        actuator_config = ActuatorConfig(namespace=namespace, retry=retry)
        catalog = _catalog(namespace)
        store = ConfigMapControlStore(
            k8s_client.CoreV1Api(api), namespace=namespace, clock=lambda: clock[0]
        )
        self.daemon = Daemon(
            DaemonConfig(mode="active", tick_s=STEP),
            source=ReplaySource(_quiet_history()),
            engine=AutoForecaster(STEP),
            observer=KubeClusterObserver(kube, config=actuator_config, catalog=catalog),
            applier=Actuator(kube, actuator_config),
            catalog=catalog,
            planner_config=PlannerConfig(),
            horizon_s=1800,
            planning_quantile=0.9,
            step_s=STEP,
            control_state=store.load,
            clock=lambda: clock[0],
        )
        config = ControlConfig(
            listen_address="127.0.0.1:0",
            namespace=namespace,
            auth=AuthConfig(
                tokens=(TokenConfig(name="oncall", scope=Scope.WRITE, token=TOKEN),)  # type: ignore[arg-type]
            ),
        )
        self.server = ControlServer(
            config=config, store=store, view=self.daemon, clock=lambda: clock[0]
        )


def _replicas(api: k8s_client.ApiClient, namespace: str) -> tuple[int, dict[str, str]]:
    deployment = KubeClient(api).get(DEPLOYMENTS.path(namespace, "chat"))
    assert deployment is not None
    annotations = deployment["metadata"].get("annotations") or {}
    return int(deployment["spec"].get("replicas") or 0), annotations


async def test_warm_request_raises_floor_ahead_and_restores_it_across_a_restart(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    k8s_client.AppsV1Api(k8s_api).create_namespaced_deployment(
        k8s_namespace,
        deployment_body("chat", replicas=0, image="registry.example.com/chat:v1"),
    )
    clock = [T0]
    first = Process(k8s_api, k8s_namespace, clock)
    await first.daemon.tick()  # knows the model before the request names it
    port = await first.server.start()
    start_s, duration_s = T0 + 1200, 1800.0

    def warm() -> str:
        with ControlClient(f"127.0.0.1:{port}", token=TOKEN) as client:
            stored = client.warm(
                "chat", replicas=3, start_s=start_s, duration_s=duration_s, reason="launch"
            )
            return stored.id

    request_id = await asyncio.to_thread(warm)
    assert request_id.startswith("req-")

    raised_at: float | None = None
    while clock[0] < start_s - 30:  # until just before the start, then a restart
        await first.daemon.tick()
        replicas, annotations = _replicas(k8s_api, k8s_namespace)
        if replicas >= 3 and raised_at is None:
            raised_at = clock[0]
            assert annotations.get(ORIGINAL_REPLICAS) == "0"  # the original is recorded
        clock[0] += STEP
    await first.server.stop(1.0)
    assert raised_at is not None, "the floor was not raised ahead of the request's start"
    assert raised_at < start_s

    # "Restart": a new daemon and server; the request lives in the ConfigMap, not in memory.
    second = Process(k8s_api, k8s_namespace, clock)
    assert (await second.daemon.tick()).plan is not None
    assert _replicas(k8s_api, k8s_namespace)[0] == 3  # still held by the stored request
    while clock[0] < start_s + duration_s + 600:
        clock[0] += STEP
        await second.daemon.tick()
        if clock[0] < start_s + duration_s - STEP:
            assert _replicas(k8s_api, k8s_namespace)[0] >= 3, clock[0] - start_s
    replicas, annotations = _replicas(k8s_api, k8s_namespace)
    assert replicas == 0  # restored after the end
    assert ORIGINAL_REPLICAS not in annotations
    print(f"\nfloor raised {start_s - raised_at:.0f} s before the request's start")
