"""Every write of the actuator is fenced by the leader Lease, on every retry attempt.

A real API server behind the fault proxy: the leader's floor write meets 503s and retries; its
Lease expires (by the test clock) between two attempts. Fenced, the retries stop at once and
nothing is written; unfenced, the same retries would go on and land.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig, RetryConfig
from actuator.floors import ReplicaFloors
from actuator.kube import KubeClient
from common.ids import ModelId
from planner.actions import ReplicaFloor, WorkloadRef
from prewarm.daemon.leader import LeaseElector, NotLeader
from tests.actuator.faultproxy import Fault, FaultProxy
from tests.harness.k8s import ControlPlane
from tests.harness.workloads import deployment, get

pytestmark = pytest.mark.k8s

NOW = 1_800_000_000.0


@pytest.fixture
def proxy(plane: ControlPlane) -> Iterator[FaultProxy]:
    started = FaultProxy(upstream=plane.url, pki=plane.workdir / "pki").start()
    yield started
    started.stop()


def _floor(namespace: str) -> ReplicaFloor:
    return ReplicaFloor(ModelId("llama"), WorkloadRef(namespace, "llama"), 4, NOW + 600, "r", 1.0)


async def test_an_old_leaders_retries_stop_when_its_lease_runs_out(
    plane: ControlPlane,
    proxy: FaultProxy,
    kube: KubeClient,
    config: ActuatorConfig,
    k8s_api: k8s_client.ApiClient,
) -> None:
    clock = [NOW]
    elector = LeaseElector(
        KubeClient(k8s_api, RetryConfig(attempts=2)),
        namespace=config.namespace,
        name="prewarm-leader",
        identity="old",
        lease_duration_s=15,
        retry_period_s=2.0,
        clock=lambda: clock[0],
    )
    assert await elector.try_acquire_or_renew()
    elector.fence()  # leads now: the fence lets writes through

    def sleep(seconds: float) -> None:
        clock[0] += 8.0  # each backoff, the leader's clock moves on (and it renews nothing)
        time.sleep(min(seconds, 0.05))

    fenced = KubeClient(
        plane.token_client("unused", host=proxy.url),
        RetryConfig(attempts=6, initial_backoff_s=0.1, max_backoff_s=1.0),
        sleep=sleep,
        fence=elector.fence,
    )
    path = deployment(kube, config.namespace, replicas=1)
    proxy.faults.append(Fault("PATCH", "/deployments/", status=503, times=100))

    with pytest.raises(NotLeader, match="no longer holds Lease"):
        ReplicaFloors(fenced, config).raise_floor(_floor(config.namespace), now_s=NOW)

    # Attempts at +0 s and +8 s; at +16 s the Lease (15 s) is past its last 2 s: no third.
    assert proxy.count("PATCH", "/deployments/", status=503) == 2
    assert get(kube, path)["spec"]["replicas"] == 1
    # Dry runs are not writes: they pass the fence.
    proxy.faults.clear()
    ReplicaFloors(fenced, config).raise_floor(_floor(config.namespace), now_s=NOW, dry_run=True)
