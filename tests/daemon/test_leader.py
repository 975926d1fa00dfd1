"""Lease leader election against the real API server: one acts, failover within the lease time."""

from __future__ import annotations

import asyncio
import logging

import pytest
import structlog.testing
from kubernetes import client as k8s_client

from actuator.config import RetryConfig
from actuator.kube import KubeClient
from prewarm.daemon.leader import LEASES, Decision, LeaseElector, LeaseState, decide
from tests.actuator.faultproxy import Fault, FaultProxy
from tests.harness.k8s import ControlPlane

pytestmark = pytest.mark.k8s


def _elector(
    api: k8s_client.ApiClient, namespace: str, who: str, clock: list[float]
) -> LeaseElector:
    return LeaseElector(
        KubeClient(api, RetryConfig(attempts=2, initial_backoff_s=0.05, request_timeout_s=5)),
        namespace=namespace,
        name="prewarm-leader",
        identity=who,
        lease_duration_s=15,
        retry_period_s=2.0,
        address=f"{who}.example:50051",
        clock=lambda: clock[0],
    )


async def test_exactly_one_leads_and_the_other_takes_over_after_expiry(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    clock = [1_000_000.0]
    a = _elector(k8s_api, k8s_namespace, "a", clock)
    b = _elector(k8s_api, k8s_namespace, "b", clock)
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True]  # exactly one wins the creation race
    leader, follower = (a, b) if results[0] else (b, a)
    for _ in range(3):  # renewals keep it; the follower stays out
        clock[0] += 5
        assert await leader.try_acquire_or_renew()
        assert not await follower.try_acquire_or_renew()
    # The leader crashes (stops renewing): the follower takes over once the lease expires.
    clock[0] += 14
    assert not await follower.try_acquire_or_renew()
    clock[0] += 2
    assert await follower.try_acquire_or_renew()
    assert follower.is_leader
    assert not leader.is_leader  # its own view expired too, by the same clock
    assert follower.leader_address == f"{follower.identity}.example:50051"
    assert not await leader.try_acquire_or_renew()
    assert leader.leader_address == follower.leader_address  # followers learn where to go
    lease = KubeClient(k8s_api).get(LEASES.path(k8s_namespace, "prewarm-leader"))
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == follower.identity
    assert lease["spec"]["leaseTransitions"] == 1


async def test_release_hands_over_at_once(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    clock = [2_000_000.0]
    a = _elector(k8s_api, k8s_namespace, "a", clock)
    b = _elector(k8s_api, k8s_namespace, "b", clock)
    assert await a.try_acquire_or_renew()
    await a.release()
    assert not a.is_leader
    clock[0] += 1.5  # well inside the 15 s lease: a clean shutdown does not make b wait for it
    assert await b.try_acquire_or_renew()


async def test_unreachable_api_server_means_not_leader(k8s_namespace: str) -> None:
    config = k8s_client.Configuration()
    config.host = "https://127.0.0.1:1"  # nothing listens there
    config.verify_ssl = False
    config.retries = 0
    elector = _elector(k8s_client.ApiClient(config), k8s_namespace, "x", [0.0])
    assert not await elector.try_acquire_or_renew()


async def test_failed_rounds_back_off_and_a_success_resets_the_period(
    k8s_control_plane: ControlPlane, k8s_namespace: str
) -> None:
    previous = structlog.get_config()
    proxy = FaultProxy(
        upstream=k8s_control_plane.url, pki=k8s_control_plane.workdir / "pki"
    ).start()
    try:
        # Five rounds of two attempts each answered 503 (an overloaded API server), then through.
        proxy.faults.append(Fault("GET", "/leases/prewarm-leader", status=503, times=10))
        api = k8s_control_plane.token_client("unused", host=proxy.url)
        elector = _elector(api, k8s_namespace, "a", [3_000_000.0])
        waits = []
        # Whatever level an earlier test configured, this one hears info and up.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):
                assert not await elector.try_acquire_or_renew()
                waits.append(elector.next_wait_s())
            assert await elector.try_acquire_or_renew()
        # Doubling from retry_period_s (2 s), capped at the 15 s lease duration; then reset.
        assert waits == [2.0, 4.0, 8.0, 15.0, 15.0]
        assert elector.next_wait_s() == 2.0
        # Said once at warning level (the repeats are at debug, which the level may drop).
        said = [
            (e["log_level"], e["event"])
            for e in logs
            if "lease round" in e["event"] and e["log_level"] != "debug"
        ]
        assert said == [
            ("warning", "lease round failed; retrying with backoff"),
            ("info", "lease rounds succeed again"),
        ]
        assert next(e for e in logs if e["event"] == "lease rounds succeed again")["failures"] == 5
    finally:
        structlog.configure(**previous)
        proxy.stop()


@pytest.mark.parametrize(
    ("lease", "decision"),
    [
        (None, Decision.CREATE),
        (LeaseState("me", 100.0, 15, 0, "1"), Decision.RENEW),
        (LeaseState("other", 100.0, 15, 0, "1"), Decision.FOLLOW),
        (LeaseState("other", 80.0, 15, 0, "1"), Decision.TAKE_OVER),
        (LeaseState(None, 100.0, 1, 0, "1"), Decision.TAKE_OVER),
    ],
)
def test_decide(lease: LeaseState | None, decision: Decision) -> None:
    assert decide(lease, identity="me", now_s=100.0) is decision
