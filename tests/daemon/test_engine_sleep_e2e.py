"""End to end: a serving replica kept only as a floor sleeps in its engine while nothing is
forecast, and the daemon wakes it before the daily spike.

Real Prometheus with four days of a daily 12:00-13:00 spike, a real API server with a kwok node
running the model's serving pod, and the daemon in active mode on a test clock from 11:00 to
12:10. The pod's engine is a fake speaking vLLM's sleep contract on 127.0.0.1 (vLLM needs a GPU),
found through the pod's ``prewarm.io/engine-address`` annotation.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kubernetes import client as k8s_client

from actuator.apply import Actuator
from actuator.config import ActuatorConfig, RetryConfig
from actuator.engines import ENGINE_ADDRESS_ANNOTATION, Engines
from actuator.kube import DEPLOYMENTS, KubeClient
from actuator.observer import KubeClusterObserver
from common.ids import ModelId
from forecaster.config import PrometheusSourceConfig
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from forecaster.types import SeriesBatch
from planner.catalog import parse_catalog
from planner.config import PlannerConfig
from planner.leadtime import Stage
from prewarm.daemon.app import ThreadedSource
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from tests.harness.fake_engine import fake_engine
from tests.harness.k8s import make_kwok_nodes, wait_for
from tests.harness.prometheus import RunningPrometheus, prometheus_with_history
from tests.harness.workloads import apply_pod, deployment, pod_body

pytestmark = [pytest.mark.k8s, pytest.mark.prometheus, pytest.mark.slow]

STEP = 60.0
DAY = 86400.0
MODEL = ModelId("chat")
IMAGE = "vllm/vllm-openai:v0.9"


def _history(day0_s: float, days: int) -> SeriesBatch:
    minutes = np.arange(int(days * DAY / STEP))
    hour = (minutes * STEP % DAY) / 3600.0
    rng = np.random.default_rng(5)
    counts = np.where((hour >= 12) & (hour < 13), rng.poisson(600.0, minutes.size), 0)
    return SeriesBatch(
        models=(MODEL,), start_s=day0_s, step_s=STEP, counts=counts[None, :].astype(np.float64)
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[RunningPrometheus, float]]:
    test_day_s = math.floor(time.time() / DAY) * DAY - DAY
    with prometheus_with_history(_history(test_day_s - 4 * DAY, 5), tmp_path) as server:
        yield server, test_day_s


def test_the_idle_replica_sleeps_and_is_woken_before_the_spike(
    prometheus: tuple[RunningPrometheus, float],
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
) -> None:
    server, test_day_s = prometheus
    pool = f"{k8s_namespace}-sleep"
    (node,) = make_kwok_nodes(k8s_api, pool=pool, count=1, gpus=8)
    retry = RetryConfig(attempts=4, initial_backoff_s=0.05, max_backoff_s=0.5)
    kube = KubeClient(k8s_api, retry)
    deployment(kube, k8s_namespace, "chat", replicas=1)
    catalog = parse_catalog(
        f"""
models:
  chat:
    weights_gb: 16
    image: {IMAGE}
    replica_rps: 5
    compile_s: 30
    min_replicas: 1
    node_pool: {pool}
    workload: {{namespace: {k8s_namespace}, name: chat}}
    engine: {{kind: vllm, level: 1, wake_s: 2}}
"""
    )
    with fake_engine(wake_s=0.4) as engine:
        pod = pod_body("chat-0", namespace=k8s_namespace, image=IMAGE, node=node,
                       labels={"app": "chat"})  # fmt: skip
        pod["metadata"]["annotations"] = {ENGINE_ADDRESS_ANNOTATION: engine.address}
        apply_pod(kube, pod)
        engines = Engines(kube, catalog)
        wait_for(lambda: len(engines.pods(MODEL)) == 1, what="the serving pod Ready")
        # What the Deployment controller (not running here) reports.
        kube.merge_patch(
            DEPLOYMENTS.path(k8s_namespace, "chat", sub="status"),
            {"status": {"replicas": 1, "readyReplicas": 1}},
            field_manager="test",
            dry_run=False,
        )
        config = ActuatorConfig(namespace=k8s_namespace, retry=retry)
        observer = KubeClusterObserver(kube, config=config, catalog=catalog, engines=engines)
        clock = [test_day_s + 11 * 3600.0]
        daemon = Daemon(
            DaemonConfig(mode="active", tick_s=STEP),
            source=ThreadedSource(
                PrometheusSource(
                    PrometheusSourceConfig(url=server.url, step_s=int(STEP)),
                    history_window_s=4 * DAY,
                )
            ),
            engine=AutoForecaster(STEP, history_window_s=4 * DAY),
            observer=observer,
            applier=Actuator(kube, config, engines=engines),
            catalog=catalog,
            planner_config=PlannerConfig(),
            horizon_s=1800,
            planning_quantile=0.9,
            step_s=STEP,
            clock=lambda: clock[0],
        )
        spike_s = test_day_s + 12 * 3600.0
        asleep_at: list[float] = []
        awake_at: list[float] = []

        async def run() -> list[float]:
            wakes: list[float] = []
            while clock[0] < spike_s + 600:
                was = engine.asleep
                report = await daemon.tick()
                assert all(o.result != "error" for o in report.applied), report.applied
                if engine.asleep and not was:
                    asleep_at.append(clock[0])
                if was and not engine.asleep:
                    awake_at.append(clock[0])
                snapshot = daemon.observed()
                if snapshot is not None:
                    wakes += [o.seconds for o in snapshot.stage_observations
                              if o.stage is Stage.WAKE]  # fmt: skip
                clock[0] += STEP
            await observer.close()
            return wakes

        wakes = asyncio.run(run())
    hours = [round((t - test_day_s) / 3600, 3) for t in (*asleep_at, *awake_at)]
    print(f"\nslept at, woke at (hours of the test day): {hours}; measured wakes {wakes}")
    assert asleep_at, "the idle replica was never put to sleep"
    assert asleep_at[0] < spike_s - 1800  # asleep long before the spike
    assert awake_at, "the replica was never woken"
    assert spike_s - 900 <= awake_at[0] <= spike_s  # woken ahead of the spike, not long before
    assert not engine.asleep  # awake through the spike
    assert wakes
    assert all(0.4 <= w < 5.0 for w in wakes)
