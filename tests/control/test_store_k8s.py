"""The ConfigMap store against a real kube-apiserver: durability, optimistic concurrency, errors,
and the control service on top of it across a daemon restart and a leader change.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from kubernetes import client as k8s_client

from common.errors import DataLoss, FailedPrecondition, InvalidInput
from common.ids import ModelId, RequestId
from prewarm.control.overrides import (
    ControlState,
    Limits,
    ManualRequest,
    active_overrides,
    add_request,
    dumps,
    loads,
)
from prewarm.control.store import STATE_KEY, Change, ConfigMapControlStore
from prewarm.control.view import StaticDaemonView
from protos import control_pb2, control_pb2_grpc
from tests.control.conftest import (
    READ_TOKEN,
    WRITE_TOKEN,
    Clock,
    RunningServer,
    control_config,
    start_server,
    stop_server,
)
from tests.harness.rpc import bearer, refused

pytestmark = pytest.mark.k8s

LIMITS = Limits(
    max_replicas_per_request=64,
    max_duration_s=86400,
    max_start_ahead_s=86400,
    start_grace_s=60,
    max_active_requests=100,
)
WRITE = bearer(WRITE_TOKEN)
READ = bearer(READ_TOKEN)
CONFIG_MAP = "prewarm-control"


def manual(number: int, *, now_s: float, duration_s: float = 3600.0) -> ManualRequest:
    return ManualRequest(
        id=RequestId(f"req-{number:016x}"),
        model=ModelId("llama-70b"),
        replicas=number,
        tier=None,
        start_s=now_s,
        end_s=now_s + duration_s,
        created_s=now_s,
        created_by="test",
    )


def adder(request: ManualRequest, now_s: float) -> Change[ManualRequest]:
    def change(state: ControlState) -> tuple[ControlState, ManualRequest]:
        return add_request(state, request, limits=LIMITS, now_s=now_s), request

    return change


def adding(number: int, now_s: float, *, duration_s: float = 3600.0) -> Change[ManualRequest]:
    """The change that stores :func:`manual` request ``number``, made at ``now_s``."""
    return adder(manual(number, now_s=now_s, duration_s=duration_s), now_s)


@dataclass
class Cluster:
    """The test's namespace on the real apiserver, and a clock the stores share."""

    core: k8s_client.CoreV1Api
    namespace: str
    clock: Clock

    def store(self, **options: Any) -> ConfigMapControlStore:
        """A new store on this namespace's ConfigMap (a new daemon process, as far as it knows)."""
        return ConfigMapControlStore(
            self.core, namespace=self.namespace, clock=self.clock, **options
        )

    def config_map(self) -> k8s_client.V1ConfigMap:
        """The stored ConfigMap, read directly (not through a store)."""
        return self.core.read_namespaced_config_map(CONFIG_MAP, self.namespace)


@pytest.fixture
def cluster(k8s_api: k8s_client.ApiClient, k8s_namespace: str) -> Cluster:
    return Cluster(k8s_client.CoreV1Api(k8s_api), k8s_namespace, Clock())


def test_state_survives_a_new_store_and_is_one_configmap(cluster: Cluster) -> None:
    store = cluster.store()

    async def scenario() -> None:
        assert await store.load() == ControlState()
        now = cluster.clock()
        await store.update(adding(1, now))
        await store.update(adding(2, now))
        state = await cluster.store().load()  # a restarted daemon's store
        assert [r.id for r in state.requests] == ["req-0000000000000001", "req-0000000000000002"]

    asyncio.run(scenario())
    stored = cluster.config_map()
    assert stored.metadata.labels["app.kubernetes.io/managed-by"] == "prewarm"
    document = json.loads(stored.data[STATE_KEY])
    assert document["version"] == 1
    assert len(document["requests"]) == 2


def test_a_concurrent_write_is_retried_not_lost(cluster: Cluster) -> None:
    ours = cluster.store()
    now = cluster.clock()
    asyncio.run(ours.update(adding(1, now)))
    attempts: list[int] = []

    def racing_change(state: ControlState) -> tuple[ControlState, int]:
        attempts.append(len(state.requests))
        if len(attempts) == 1:
            # Another replica writes between our read and our write: our write must get 409.
            current = cluster.config_map()
            theirs = add_request(
                loads(current.data[STATE_KEY]), manual(2, now_s=now), limits=LIMITS, now_s=now
            )
            current.data[STATE_KEY] = dumps(theirs)
            cluster.core.replace_namespaced_config_map(CONFIG_MAP, cluster.namespace, current)
        return add_request(state, manual(3, now_s=now), limits=LIMITS, now_s=now), len(attempts)

    result = asyncio.run(ours.update(racing_change))
    assert result == 2
    assert attempts == [1, 2]
    state = asyncio.run(ours.load())
    assert sorted(r.replicas or 0 for r in state.requests) == [1, 2, 3]


def test_many_writers_at_once_lose_nothing(cluster: Cluster) -> None:
    stores = [cluster.store(max_attempts=20) for _ in range(4)]
    now = cluster.clock()

    async def scenario() -> None:
        await asyncio.gather(
            *(stores[number % 4].update(adding(number, now)) for number in range(1, 9))
        )

    asyncio.run(scenario())
    state = asyncio.run(stores[0].load())
    assert sorted(r.replicas or 0 for r in state.requests) == list(range(1, 9))


def test_a_refused_change_writes_nothing_and_expired_entries_are_pruned(cluster: Cluster) -> None:
    store = cluster.store()
    now = cluster.clock()
    asyncio.run(store.update(adding(1, now, duration_s=60)))
    version = cluster.config_map().metadata.resource_version

    def refuse(state: ControlState) -> tuple[ControlState, None]:
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        asyncio.run(store.update(refuse))
    assert cluster.config_map().metadata.resource_version == version
    cluster.clock.advance(120)
    asyncio.run(store.update(adding(2, cluster.clock())))
    stored = json.loads(cluster.config_map().data[STATE_KEY])
    assert [r["id"] for r in stored["requests"]] == ["req-0000000000000002"]


def test_store_errors_say_what_to_do(cluster: Cluster) -> None:
    missing = ConfigMapControlStore(cluster.core, namespace="no-such-namespace")
    with pytest.raises(FailedPrecondition, match="namespace no-such-namespace does not exist"):
        asyncio.run(missing.update(lambda state: (state, None)))
    cluster.core.create_namespaced_config_map(
        cluster.namespace,
        {"metadata": {"name": CONFIG_MAP}, "data": {STATE_KEY: "{not json"}},
    )
    corrupt = ConfigMapControlStore(cluster.core, namespace=cluster.namespace)
    with pytest.raises(DataLoss, match=f"{cluster.namespace}/prewarm-control key state.json"):
        asyncio.run(corrupt.load())


def test_requests_survive_a_daemon_restart_and_a_leader_change(cluster: Cluster) -> None:
    clock = cluster.clock
    config = control_config(namespace=cluster.namespace)

    def daemon() -> RunningServer:
        """A daemon process's control server, with a store object of its own."""
        view = StaticDaemonView(models={ModelId("llama-70b")})
        return start_server(config=config, store=cluster.store(), view=view, clock=clock)

    first = daemon()
    try:
        with grpc.insecure_channel(first.address) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            warm = control_pb2.WarmRequest(
                model="llama-70b", replicas=4, start_s=clock() + 900, duration_s=7200
            )
            reply = stub.Warm(warm, metadata=WRITE, timeout=10)
            negative = control_pb2.WarmRequest(model="llama-70b", replicas=-4, duration_s=60)
            refusal = refused(stub.Warm, negative, metadata=WRITE, timeout=10)
            assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop_server(first)

    # A new daemon (new process, new store object) on another replica that now leads.
    second = daemon()
    try:
        with grpc.insecure_channel(second.address) as channel:
            listing = control_pb2_grpc.ControlStub(channel).ListRequests(
                control_pb2.ListRequestsRequest(), metadata=READ, timeout=10
            )
        assert [r.id for r in listing.requests] == [reply.request.id]
        state = second.state()
        # The planner input: no floor yet, a floor once within the lead time, none after the end.
        assert ModelId("llama-70b") not in active_overrides(state, clock()).floors
        early = active_overrides(state, clock() + 600, lead_time_s=300)
        assert early.floors[ModelId("llama-70b")].min_replicas == 4
        assert not active_overrides(state, clock() + 900 + 7200).floors
        clock.advance(900 + 7200)
        assert second.state().requests == ()
    finally:
        stop_server(second)


def test_cached_loads_see_own_writes_at_once_and_others_after_max_age(cluster: Cluster) -> None:
    ours, theirs = cluster.store(), cluster.store()
    now = cluster.clock()
    asyncio.run(ours.update(adding(1, now)))
    assert len(asyncio.run(ours.load(max_age_s=2)).requests) == 1
    asyncio.run(theirs.update(adding(2, now)))
    assert len(asyncio.run(ours.load(max_age_s=2)).requests) == 1  # cached, within 2 s
    assert len(asyncio.run(ours.load()).requests) == 2  # max_age_s=0 always reads
    asyncio.run(theirs.update(adding(3, now)))
    cluster.clock.advance(3)
    assert len(asyncio.run(ours.load(max_age_s=2)).requests) == 3  # cache too old: re-read
