"""End to end: real Prometheus history with a daily spike, a real API server with kwok nodes in two
pools, the daemon in active mode on a test clock placed before the spike.

It must create the placeholder capacity, the image pre-pull and the raised replica floor *before*
the spike starts, and restore everything after it. The clock is the test's (the daemon reads "now"
from it); Prometheus and the API server are real processes on 127.0.0.1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from kubernetes import client as k8s_client

from actuator.apply import Actuator
from actuator.config import ActuatorConfig, RetryConfig
from actuator.floors import ORIGINAL_REPLICAS
from actuator.kube import DEPLOYMENTS, PODS, KubeClient
from actuator.observer import KubeClusterObserver
from common.ids import ModelId
from forecaster.config import PrometheusSourceConfig
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from forecaster.types import SeriesBatch
from planner.catalog import parse_catalog
from planner.config import PlannerConfig
from prewarm.daemon.app import ThreadedSource
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from tests.harness.k8s import make_kwok_nodes
from tests.harness.prometheus import RunningPrometheus, prometheus_with_history
from tests.harness.workloads import deployment_body

pytestmark = [pytest.mark.k8s, pytest.mark.prometheus, pytest.mark.slow]

STEP = 60.0
DAY = 86400.0
MODEL = ModelId("chat")
IMAGE = "registry.example.com/serving/chat:v1"
SPIKE_START_H, SPIKE_END_H = 12.0, 13.0
SPIKE_PER_MIN = 600.0  # 10 requests/s for an hour, every day


def _history(day0_s: float, days: int) -> SeriesBatch:
    """``days`` days of per-minute counts: nothing, except the daily 12:00-13:00 spike."""
    minutes = np.arange(int(days * DAY / STEP))
    hour = (minutes * STEP % DAY) / 3600.0
    spike = (hour >= SPIKE_START_H) & (hour < SPIKE_END_H)
    rng = np.random.default_rng(7)
    counts = np.where(spike, rng.poisson(SPIKE_PER_MIN, minutes.size), 0).astype(np.float64)
    return SeriesBatch(models=(MODEL,), start_s=day0_s, step_s=STEP, counts=counts[None, :])


@dataclass
class Landing:
    """When (test clock) each kind of action was first seen in the cluster, and when it was gone."""

    first_s: dict[str, float] = field(default_factory=dict)
    last_s: dict[str, float] = field(default_factory=dict)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[RunningPrometheus, float]]:
    # Whole days in the past: the test day is "yesterday" by the wall clock, so every sample the
    # daemon queries exists already (it only ever asks for steps before its test clock).
    import time

    test_day_s = math.floor(time.time() / DAY) * DAY - DAY
    day0_s = test_day_s - 4 * DAY
    with prometheus_with_history(_history(day0_s, 5), tmp_path) as server:
        yield server, test_day_s


def test_actions_land_before_the_spike_and_are_restored_after(
    prometheus: tuple[RunningPrometheus, float],
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
) -> None:
    server, test_day_s = prometheus
    pool, other_pool = f"{k8s_namespace}-a100", f"{k8s_namespace}-h100"
    make_kwok_nodes(k8s_api, pool=pool, count=2, gpus=8)
    make_kwok_nodes(k8s_api, pool=other_pool, count=1, gpus=8)
    apps = k8s_client.AppsV1Api(k8s_api)
    # The model's serving workload, scaled to zero.
    apps.create_namespaced_deployment(
        k8s_namespace, deployment_body("chat", replicas=0, image=IMAGE)
    )
    catalog = parse_catalog(
        f"""
models:
  chat:
    weights_gb: 16
    image: {IMAGE}
    image_gb: 5
    replica_rps: 5
    compile_s: 30
    node_pool: {pool}
    workload: {{namespace: {k8s_namespace}, name: chat}}
"""
    )
    retry = RetryConfig(attempts=4, initial_backoff_s=0.05, max_backoff_s=0.5)
    actuator_config = ActuatorConfig(namespace=k8s_namespace, retry=retry)
    kube = KubeClient(k8s_api, retry)
    clock = [test_day_s + 11 * 3600.0]
    source = PrometheusSource(
        PrometheusSourceConfig(url=server.url, step_s=int(STEP)), history_window_s=4 * DAY
    )
    daemon = Daemon(
        DaemonConfig(mode="active", tick_s=STEP),
        source=ThreadedSource(source),
        engine=AutoForecaster(STEP, history_window_s=4 * DAY),
        observer=KubeClusterObserver(kube, config=actuator_config, catalog=catalog),
        applier=Actuator(kube, actuator_config),
        catalog=catalog,
        # Warm holds of the idle model are priced out: a miss would delay ~770 requests (10/s
        # over the lead time), which would justify holding it at P = 0.3 % per tick; this test
        # is about the spike's actions landing ahead of it and being restored after it.
        planner_config=PlannerConfig(min_value_density=1.0),
        horizon_s=1800,
        planning_quantile=0.9,
        step_s=STEP,
        clock=lambda: clock[0],
    )
    spike_s = test_day_s + SPIKE_START_H * 3600
    landing = Landing()

    def look() -> None:
        now = clock[0]
        seen = {
            "placeholder": _placeholder_replicas(kube, k8s_namespace) > 0,
            "prepull": bool(_prepull_pods(kube, k8s_namespace)),
            "floor": _replicas(kube, k8s_namespace) > 0,
        }
        for kind, present in seen.items():
            if present:
                landing.first_s.setdefault(kind, now)
                landing.last_s[kind] = now

    end_s = test_day_s + 18 * 3600.0
    import asyncio

    while clock[0] < end_s:
        report = asyncio.run(daemon.tick())
        assert report.plan is not None
        assert all(o.result != "error" for o in report.applied), report.applied
        look()
        # One-minute ticks around the spike's start, coarser elsewhere to keep the test short.
        near_start = spike_s - 1800 <= clock[0] < spike_s + 600
        clock[0] += STEP if near_start else 5 * STEP

    leads = {kind: spike_s - first for kind, first in landing.first_s.items()}
    spike_end_s = test_day_s + SPIKE_END_H * 3600
    released = {kind: round((last - spike_end_s) / 60) for kind, last in landing.last_s.items()}
    print(f"\nlead before the spike (s): {leads}; last seen, minutes after it ended: {released}")
    assert set(landing.first_s) == {"placeholder", "prepull", "floor"}, landing.first_s
    assert all(lead > 0 for lead in leads.values()), leads
    # After the spike: the floor restored (0 replicas, no record left), capacity released,
    # pre-pull pods gone.
    deployment = kube.get(DEPLOYMENTS.path(k8s_namespace, "chat"))
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0
    assert ORIGINAL_REPLICAS not in (deployment["metadata"].get("annotations") or {})
    assert _placeholder_replicas(kube, k8s_namespace) == 0
    assert _prepull_pods(kube, k8s_namespace) == []


def _replicas(kube: KubeClient, namespace: str) -> int:
    deployment = kube.get(DEPLOYMENTS.path(namespace, "chat"))
    assert deployment is not None
    return int(deployment["spec"].get("replicas") or 0)


def _placeholder_replicas(kube: KubeClient, namespace: str) -> int:
    items = kube.list(
        DEPLOYMENTS.path(namespace),
        label_selector="app.kubernetes.io/component=capacity-placeholder",
    )
    return sum(int(item["spec"].get("replicas") or 0) for item in items)


def _prepull_pods(kube: KubeClient, namespace: str) -> list[str]:
    items = kube.list(
        PODS.path(namespace), label_selector="app.kubernetes.io/component=image-prepull"
    )
    return [item["metadata"]["name"] for item in items]
