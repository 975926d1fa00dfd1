"""The ConfigMap store against a real kube-apiserver: durability, optimistic concurrency, errors,
and the control service on top of it across a daemon restart and a leader change.
"""

from __future__ import annotations

import asyncio
import json

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
from prewarm.control.store import STATE_KEY, ConfigMapControlStore
from prewarm.control.view import StaticDaemonView
from protos import control_pb2, control_pb2_grpc
from tests.control.conftest import (
    READ_TOKEN,
    WRITE_TOKEN,
    Clock,
    control_config,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.k8s

LIMITS = Limits(
    max_replicas_per_request=64,
    max_duration_s=86400,
    max_start_ahead_s=86400,
    start_grace_s=60,
    max_active_requests=100,
)
WRITE = (("authorization", f"Bearer {WRITE_TOKEN}"),)
READ = (("authorization", f"Bearer {READ_TOKEN}"),)


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


def adder(request: ManualRequest, now_s: float):  # type: ignore[no-untyped-def]
    def change(state: ControlState) -> tuple[ControlState, ManualRequest]:
        return add_request(state, request, limits=LIMITS, now_s=now_s), request

    return change


def test_state_survives_a_new_store_and_is_one_configmap(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    clock = Clock()
    store = ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock)

    async def scenario() -> None:
        assert await store.load() == ControlState()
        now = clock()
        await store.update(adder(manual(1, now_s=now), now))
        await store.update(adder(manual(2, now_s=now), now))
        restarted = ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock)
        state = await restarted.load()
        assert [r.id for r in state.requests] == ["req-0000000000000001", "req-0000000000000002"]

    asyncio.run(scenario())
    stored = core.read_namespaced_config_map("prewarm-control", k8s_namespace)
    assert stored.metadata.labels["app.kubernetes.io/managed-by"] == "prewarm"
    document = json.loads(stored.data[STATE_KEY])
    assert document["version"] == 1
    assert len(document["requests"]) == 2


def test_a_concurrent_write_is_retried_not_lost(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    clock = Clock()
    ours = ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock)
    now = clock()
    asyncio.run(ours.update(adder(manual(1, now_s=now), now)))
    attempts: list[int] = []

    def racing_change(state: ControlState) -> tuple[ControlState, int]:
        attempts.append(len(state.requests))
        if len(attempts) == 1:
            # Another replica writes between our read and our write: our write must get 409.
            current = core.read_namespaced_config_map("prewarm-control", k8s_namespace)
            theirs = add_request(
                loads(current.data[STATE_KEY]), manual(2, now_s=now), limits=LIMITS, now_s=now
            )
            current.data[STATE_KEY] = dumps(theirs)
            core.replace_namespaced_config_map("prewarm-control", k8s_namespace, current)
        return add_request(state, manual(3, now_s=now), limits=LIMITS, now_s=now), len(attempts)

    result = asyncio.run(ours.update(racing_change))
    assert result == 2
    assert attempts == [1, 2]
    state = asyncio.run(ours.load())
    assert sorted(r.replicas or 0 for r in state.requests) == [1, 2, 3]


def test_many_writers_at_once_lose_nothing(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    clock = Clock()
    stores = [
        ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock, max_attempts=20)
        for _ in range(4)
    ]
    now = clock()

    async def scenario() -> None:
        await asyncio.gather(
            *(
                stores[number % 4].update(adder(manual(number, now_s=now), now))
                for number in range(1, 9)
            )
        )

    asyncio.run(scenario())
    state = asyncio.run(stores[0].load())
    assert sorted(r.replicas or 0 for r in state.requests) == list(range(1, 9))


def test_a_refused_change_writes_nothing_and_expired_entries_are_pruned(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    clock = Clock()
    store = ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock)
    now = clock()
    asyncio.run(store.update(adder(manual(1, now_s=now, duration_s=60), now)))
    version = core.read_namespaced_config_map(
        "prewarm-control", k8s_namespace
    ).metadata.resource_version

    def refuse(state: ControlState) -> tuple[ControlState, None]:
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        asyncio.run(store.update(refuse))
    after = core.read_namespaced_config_map("prewarm-control", k8s_namespace)
    assert after.metadata.resource_version == version
    clock.advance(120)
    later = clock()
    asyncio.run(store.update(adder(manual(2, now_s=later), later)))
    stored = json.loads(
        core.read_namespaced_config_map("prewarm-control", k8s_namespace).data[STATE_KEY]
    )
    assert [r["id"] for r in stored["requests"]] == ["req-0000000000000002"]


def test_store_errors_say_what_to_do(k8s_api: k8s_client.ApiClient, k8s_namespace: str) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    missing = ConfigMapControlStore(core, namespace="no-such-namespace")
    with pytest.raises(FailedPrecondition, match="namespace no-such-namespace does not exist"):
        asyncio.run(missing.update(lambda state: (state, None)))
    core.create_namespaced_config_map(
        k8s_namespace,
        {"metadata": {"name": "prewarm-control"}, "data": {STATE_KEY: "{not json"}},
    )
    corrupt = ConfigMapControlStore(core, namespace=k8s_namespace)
    with pytest.raises(DataLoss, match=f"{k8s_namespace}/prewarm-control key state.json"):
        asyncio.run(corrupt.load())


def test_requests_survive_a_daemon_restart_and_a_leader_change(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    clock = Clock()
    config = control_config(namespace=k8s_namespace)
    models = {ModelId("llama-70b")}

    def store() -> ConfigMapControlStore:
        return ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock)

    first = start_server(
        config=config, store=store(), view=StaticDaemonView(models=set(models)), clock=clock
    )
    try:
        with grpc.insecure_channel(first.address) as channel:
            reply = control_pb2_grpc.ControlStub(channel).Warm(
                control_pb2.WarmRequest(
                    model="llama-70b", replicas=4, start_s=clock() + 900, duration_s=7200
                ),
                metadata=WRITE,
                timeout=10,
            )
            with pytest.raises(grpc.RpcError) as caught:
                control_pb2_grpc.ControlStub(channel).Warm(
                    control_pb2.WarmRequest(model="llama-70b", replicas=-4, duration_s=60),
                    metadata=WRITE,
                    timeout=10,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    finally:
        stop_server(first)

    # A new daemon (new process, new store object) on another replica that now leads.
    second = start_server(
        config=config, store=store(), view=StaticDaemonView(models=set(models)), clock=clock
    )
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


def test_cached_loads_see_own_writes_at_once_and_others_after_max_age(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    clock = Clock()
    ours = ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock)
    theirs = ConfigMapControlStore(core, namespace=k8s_namespace, clock=clock)
    now = clock()
    asyncio.run(ours.update(adder(manual(1, now_s=now), now)))
    assert len(asyncio.run(ours.load(max_age_s=2)).requests) == 1
    asyncio.run(theirs.update(adder(manual(2, now_s=now), now)))
    assert len(asyncio.run(ours.load(max_age_s=2)).requests) == 1  # cached, within 2 s
    assert len(asyncio.run(ours.load()).requests) == 2  # max_age_s=0 always reads
    asyncio.run(theirs.update(adder(manual(3, now_s=now), now)))
    clock.advance(3)
    assert len(asyncio.run(ours.load(max_age_s=2)).requests) == 3  # cache too old: re-read
