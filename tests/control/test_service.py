"""The control service over real gRPC: writes, reads, bad input, auth, leadership, deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.errors import InvalidInput
from common.ids import ModelId, NodeName, PoolName
from planner.actions import NodeCapacity, Preload, ReplicaFloor, Tier, WarmPlan, WorkloadRef
from prewarm.control.overrides import ControlState
from prewarm.control.service import ControlServer
from prewarm.control.store import Change, MemoryControlStore, T
from prewarm.control.view import Explanation, StaticDaemonView
from protos import control_pb2, control_pb2_grpc
from tests.control.conftest import (
    READ_TOKEN,
    WRITE_TOKEN,
    Clock,
    RunningServer,
    control_config,
    make_forecast,
    start_server,
    stop_server,
)
from tests.harness.rpc import bearer, refused

WRITE = bearer(WRITE_TOKEN)
READ = bearer(READ_TOKEN)


@pytest.fixture
def stub(running: RunningServer) -> Iterator[control_pb2_grpc.ControlStub]:
    with grpc.insecure_channel(running.address) as channel:
        yield control_pb2_grpc.ControlStub(channel)


def warm_request(**fields: object) -> control_pb2.WarmRequest:
    base: dict[str, object] = {"model": "llama-70b", "replicas": 4, "duration_s": 7200.0}
    base.update(fields)
    return control_pb2.WarmRequest(**base)  # type: ignore[arg-type]


def test_warm_is_stored_and_listed_with_its_author(
    running: RunningServer, stub: control_pb2_grpc.ControlStub
) -> None:
    start = running.clock() + 3600
    reply = stub.Warm(warm_request(start_s=start, reason="launch at 9"), metadata=WRITE, timeout=5)
    assert reply.request.id == running.ids[0]
    assert reply.request.state == "pending"
    assert reply.request.created_by == "oncall"
    assert reply.request.end_s == pytest.approx(start + 7200)
    listing = stub.ListRequests(control_pb2.ListRequestsRequest(), metadata=READ, timeout=5)
    assert [r.id for r in listing.requests] == [reply.request.id]
    assert listing.requests[0].replicas == 4
    assert listing.requests[0].reason == "launch at 9"
    stored = running.state()
    assert stored.requests[0].start_s == pytest.approx(start)


def test_warm_without_start_starts_now_and_is_active(
    running: RunningServer, stub: control_pb2_grpc.ControlStub
) -> None:
    reply = stub.Warm(warm_request(tier=control_pb2.TIER_GPU), metadata=WRITE, timeout=5)
    assert reply.request.state == "active"
    assert reply.request.tier == control_pb2.TIER_GPU
    assert abs(reply.request.start_s - running.clock()) < 5


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"model": "llama-7b"}, grpc.StatusCode.NOT_FOUND, "unknown model 'llama-7b'"),
        ({"model": "bad model!"}, grpc.StatusCode.INVALID_ARGUMENT, "malformed model id"),
        ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "malformed model id"),
        ({"replicas": -2}, grpc.StatusCode.INVALID_ARGUMENT, "replicas must be >= 1"),
        ({"replicas": 10**12}, grpc.StatusCode.INVALID_ARGUMENT, "not a plausible"),
        ({"replicas": 65}, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_replicas_per_request"),
        ({"duration_s": 30 * 86400}, grpc.StatusCode.INVALID_ARGUMENT, "beyond the maximum"),
        ({"duration_s": 0}, grpc.StatusCode.INVALID_ARGUMENT, "must be > 0"),
        ({"duration_s": -5}, grpc.StatusCode.INVALID_ARGUMENT, "duration_s must be"),
        ({"duration_s": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        ({"start_s": 1_000_000.0}, grpc.StatusCode.INVALID_ARGUMENT, "in the past"),
        ({"start_s": float("inf")}, grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        ({"tier": 7}, grpc.StatusCode.INVALID_ARGUMENT, "unknown tier 7"),
        ({"reason": "x" * 501}, grpc.StatusCode.INVALID_ARGUMENT, "reason is longer"),
    ],
)
def test_bad_warm_requests_get_the_right_code_and_store_nothing(
    running: RunningServer,
    stub: control_pb2_grpc.ControlStub,
    fields: dict[str, object],
    code: grpc.StatusCode,
    message: str,
) -> None:
    refusal = refused(stub.Warm, warm_request(**fields), metadata=WRITE)
    assert refusal.code == code, refusal.details
    assert message in refusal.details
    assert running.state() == ControlState()


def test_replicas_unset_and_no_tier_is_invalid(stub: control_pb2_grpc.ControlStub) -> None:
    request = control_pb2.WarmRequest(model="llama-70b", duration_s=60)
    refusal = refused(stub.Warm, request, metadata=WRITE)
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "--replicas" in refusal.details


def test_gpu_budget_cap_refuses_with_the_reason() -> None:
    handle = start_server(
        config=control_config(max_gpu_bytes_per_request=100 * 10**9),
        model_bytes=lambda model: 141 * 10**9 if model == "llama-70b" else None,
    )
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            gpu = warm_request(replicas=1, tier=control_pb2.TIER_GPU)
            refusal = refused(stub.Warm, gpu, metadata=WRITE, timeout=None)
            assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "141.0 GB" in refusal.details
            assert "max_gpu_bytes_per_request" in refusal.details
            stub.Warm(warm_request(replicas=1, tier=control_pb2.TIER_HOST), metadata=WRITE)
        assert len(handle.state().requests) == 1
    finally:
        stop_server(handle)


def test_too_many_stored_requests_is_resource_exhausted() -> None:
    handle = start_server(config=control_config(max_active_requests=2))
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            for _ in range(2):
                stub.Warm(warm_request(), metadata=WRITE, timeout=5)
            refusal = refused(stub.Warm, warm_request(), metadata=WRITE)
            assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(handle.state().requests) == 2
    finally:
        stop_server(handle)


def test_cancel(running: RunningServer, stub: control_pb2_grpc.ControlStub) -> None:
    made = stub.Warm(warm_request(), metadata=WRITE, timeout=5).request
    cancelled = stub.Cancel(control_pb2.CancelRequest(id=made.id), metadata=WRITE, timeout=5)
    assert cancelled.request.id == made.id
    assert running.state().requests == ()
    for request_id, code in (
        (made.id, grpc.StatusCode.NOT_FOUND),
        ("req-ffffffffffffffff", grpc.StatusCode.NOT_FOUND),
        ("drop table", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        refusal = refused(stub.Cancel, control_pb2.CancelRequest(id=request_id), metadata=WRITE)
        assert refusal.code == code


def test_requests_expire_on_time(
    running: RunningServer, stub: control_pb2_grpc.ControlStub
) -> None:
    stub.Warm(warm_request(duration_s=600), metadata=WRITE, timeout=5)
    running.clock.advance(590)
    assert len(stub.ListRequests(control_pb2.ListRequestsRequest(), metadata=READ).requests) == 1
    running.clock.advance(11)
    assert len(stub.ListRequests(control_pb2.ListRequestsRequest(), metadata=READ).requests) == 0


def test_pin_unpin_pause_resume(running: RunningServer, stub: control_pb2_grpc.ControlStub) -> None:
    pin = stub.Pin(control_pb2.PinRequest(model="mistral-7b"), metadata=WRITE, timeout=5).pin
    assert (pin.model, pin.tier, pin.until_s) == ("mistral-7b", control_pb2.TIER_GPU, 0.0)
    stub.Pause(control_pb2.PauseRequest(all_models=True, duration_s=60), metadata=WRITE)
    stub.Pause(control_pb2.PauseRequest(model="llama-70b"), metadata=WRITE)
    listing = stub.ListRequests(control_pb2.ListRequestsRequest(), metadata=READ)
    assert [p.model for p in listing.pins] == ["mistral-7b"]
    assert sorted((p.model, p.all_models) for p in listing.pauses) == [
        ("", True),
        ("llama-70b", False),
    ]
    only_llama = stub.ListRequests(
        control_pb2.ListRequestsRequest(model="llama-70b"), metadata=READ
    )
    assert only_llama.pins == []
    assert len(only_llama.pauses) == 2
    stub.Resume(control_pb2.ResumeRequest(all_models=True), metadata=WRITE)
    stub.Resume(control_pb2.ResumeRequest(model="llama-70b"), metadata=WRITE)
    stub.Unpin(control_pb2.UnpinRequest(model="mistral-7b"), metadata=WRITE)
    assert running.state() == ControlState()
    for call, request, code in (
        (stub.Unpin, control_pb2.UnpinRequest(model="mistral-7b"), grpc.StatusCode.NOT_FOUND),
        (stub.Resume, control_pb2.ResumeRequest(all_models=True), grpc.StatusCode.NOT_FOUND),
        (stub.Pause, control_pb2.PauseRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Pause, control_pb2.PauseRequest(all_models=False), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Pin, control_pb2.PinRequest(model="ghost"), grpc.StatusCode.NOT_FOUND),
        (
            stub.Pin,
            control_pb2.PinRequest(model="llama-70b", duration_s=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        assert refused(call, request, metadata=WRITE).code == code
    assert running.state() == ControlState()


def test_auth_missing_wrong_and_read_only_tokens(
    running: RunningServer, stub: control_pb2_grpc.ControlStub
) -> None:
    cases = (
        ((), "missing bearer token", grpc.StatusCode.UNAUTHENTICATED),
        (
            (("authorization", "Bearer not-a-token-at-all-123"),),
            "not recognised",
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            (("authorization", "Basic dXNlcjpwYXNz"),),
            "missing bearer token",
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (READ, "read-only; Warm needs a write token", grpc.StatusCode.PERMISSION_DENIED),
    )
    for metadata, message, expected in cases:
        refusal = refused(stub.Warm, warm_request(), metadata=metadata)
        assert refusal.code == expected
        assert message in refusal.details
    listing = refused(stub.ListRequests, control_pb2.ListRequestsRequest())
    assert listing.code == grpc.StatusCode.UNAUTHENTICATED
    assert running.state() == ControlState()
    # Both scopes read; bearer scheme is case-insensitive.
    stub.ListRequests(control_pb2.ListRequestsRequest(), metadata=READ, timeout=5)
    stub.ListRequests(
        control_pb2.ListRequestsRequest(),
        metadata=(("authorization", f"bearer {WRITE_TOKEN}"),),
        timeout=5,
    )


def test_writes_on_a_follower_name_the_leader_and_store_nothing() -> None:
    view = StaticDaemonView(models={ModelId("llama-70b")}, leader=False, leader_at="10.0.0.7:9090")
    handle = start_server(view=view)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            refusal = refused(stub.Warm, warm_request(), metadata=WRITE)
            assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "10.0.0.7:9090" in refusal.details
            assert refusal.trailing["prewarm-leader"] == "10.0.0.7:9090"
            view.leader_at = None
            pin = control_pb2.PinRequest(model="llama-70b")
            assert "no leader is known yet" in refused(stub.Pin, pin, metadata=WRITE).details
            # Reads are served by followers.
            stub.ListRequests(control_pb2.ListRequestsRequest(), metadata=READ, timeout=5)
        assert handle.state() == ControlState()
    finally:
        stop_server(handle)


class HangingStore(MemoryControlStore):
    """A store whose writes never finish (a stuck API server), to exercise the server deadline."""

    async def update(self, change: Change[T]) -> T:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def test_the_server_caps_every_call_deadline() -> None:
    clock = Clock()
    handle = start_server(config=control_config(max_call_s=0.3), store=HangingStore(clock=clock))
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            began = time.monotonic()
            # No client deadline: the server's own cap must end the call.
            refusal = refused(stub.Warm, warm_request(), metadata=WRITE, timeout=None)
            assert refusal.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "0.3 s budget" in refusal.details
            assert time.monotonic() - began < 5
            # The server is not stuck afterwards.
            stub.ListRequests(control_pb2.ListRequestsRequest(), metadata=READ, timeout=5)
    finally:
        stop_server(handle)


def test_get_forecast(running: RunningServer, stub: control_pb2_grpc.ControlStub) -> None:
    now = running.clock()
    running.view.forecast_map[ModelId("llama-70b")] = make_forecast("llama-70b", start_s=now)
    reply = stub.GetForecast(
        control_pb2.GetForecastRequest(model="llama-70b", quantiles=[0.9], horizon_s=120),
        metadata=READ,
        timeout=5,
    )
    assert list(reply.mean) == [6.0, 12.0]
    assert [(q.level, list(q.values)) for q in reply.quantiles] == [(0.9, [9.0, 18.0])]
    assert reply.method == "test-seasonal"
    assert reply.step_s == 60.0
    full = stub.GetForecast(control_pb2.GetForecastRequest(model="llama-70b"), metadata=READ)
    assert len(full.mean) == 4
    assert [q.level for q in full.quantiles] == [0.5, 0.9]
    for request, code in (
        (control_pb2.GetForecastRequest(model="llama-70b", quantiles=[0.99]), "INVALID_ARGUMENT"),
        (control_pb2.GetForecastRequest(model="llama-70b", quantiles=[2.0]), "INVALID_ARGUMENT"),
        (control_pb2.GetForecastRequest(model="llama-70b", horizon_s=-1), "INVALID_ARGUMENT"),
        (control_pb2.GetForecastRequest(model="mistral-7b"), "FAILED_PRECONDITION"),
        (control_pb2.GetForecastRequest(model="ghost"), "NOT_FOUND"),
    ):
        assert refused(stub.GetForecast, request, metadata=READ).code.name == code


def sample_plan(now_s: float) -> WarmPlan:
    llama = ModelId("llama-70b")
    return WarmPlan(
        now_s=now_s,
        actions=(
            NodeCapacity(pool=PoolName("a100"), gpus=4, reason="llama-70b at 09:00", value=300.0),
            ReplicaFloor(
                model=llama,
                workload=WorkloadRef(namespace="serving", name="llama"),
                min_replicas=4,
                until_s=now_s + 7200,
                reason="manual request req-0000000000000001 by oncall",
                value=900.0,
            ),
            Preload(
                model=ModelId("mistral-7b"),
                node=NodeName("gpu-1"),
                tier=Tier.GPU,
                bytes=14_500_000_000,
                deadline_s=now_s + 300,
                value_per_byte=1e-8,
                reason="p90 rises in 10m",
                value=145.0,
            ),
        ),
    )


def test_get_plan_and_explain(running: RunningServer, stub: control_pb2_grpc.ControlStub) -> None:
    assert not stub.GetPlan(control_pb2.GetPlanRequest(), metadata=READ).available
    now = running.clock()
    running.view.current_plan = sample_plan(now)
    plan = stub.GetPlan(control_pb2.GetPlanRequest(), metadata=READ, timeout=5)
    assert plan.available
    assert [a.kind for a in plan.actions] == [
        "node_capacity",
        "replica_floor",
        "preload",
    ]
    assert plan.actions[1].workload == "Deployment/serving/llama"
    assert plan.actions[2].tier == control_pb2.TIER_GPU
    only = stub.GetPlan(control_pb2.GetPlanRequest(model="llama-70b"), metadata=READ)
    assert [a.kind for a in only.actions] == ["replica_floor"]

    running.view.explanations[ModelId("llama-70b")] = Explanation(
        model=ModelId("llama-70b"),
        forecast_summary="p90 peaks at 3.2 req/s in 25m",
        forecast_method="mstl",
        p_request_within_horizon=0.97,
        value=900.0,
        lead_times_s={"node": 180.0, "weights": 240.0},
        constraints=("gpu memory budget: 160 GB of 160 GB planned",),
        actions=("manual request req-0000000000000001 by oncall",),
        summary="Held warm for the 09:00 launch.",
    )
    stub.Warm(warm_request(), metadata=WRITE, timeout=5)
    stub.Pause(control_pb2.PauseRequest(model="llama-70b"), metadata=WRITE, timeout=5)
    answer = stub.Explain(control_pb2.ExplainRequest(model="llama-70b"), metadata=READ, timeout=5)
    assert answer.forecast_method == "mstl"
    assert [(lt.stage, lt.seconds) for lt in answer.lead_times] == [
        ("node", 180.0),
        ("weights", 240.0),
    ]
    assert answer.constraints == ["gpu memory budget: 160 GB of 160 GB planned"]
    assert answer.overrides[0] == "llama-70b is paused"
    assert "manual request req-0000000000000001 by oncall (>= 4 replicas)" in answer.overrides[1]
    ghost = control_pb2.ExplainRequest(model="ghost")
    assert refused(stub.Explain, ghost, metadata=READ).code == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection_need_no_token(running: RunningServer) -> None:
    with grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "prewarm.control.v1.Control", "externalscaler.ExternalScaler"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        files = reflection.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
                    for symbol in ("prewarm.control.v1.Control", "externalscaler.ExternalScaler")
                ]
            ),
            timeout=5,
        )
        served = [len(r.file_descriptor_response.file_descriptor_proto) for r in files]
    assert {"prewarm.control.v1.Control", "externalscaler.ExternalScaler"} <= names
    assert served == [1, 1]  # what grpcurl needs to call the services without the .proto


def test_stop_goes_not_serving_and_is_idempotent() -> None:
    handle = start_server()
    with grpc.insecure_channel(handle.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        handle.run(handle.server.health.enter_graceful_shutdown())
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    stop_server(handle)
    asyncio.run(handle.server.stop(0.1))  # a second stop does nothing


def test_undecodable_bytes_are_invalid_argument(running: RunningServer) -> None:
    with grpc.insecure_channel(running.address) as channel:
        call = channel.unary_unary("/prewarm.control.v1.Control/Warm")
        refusal = refused(call, b"\xff\xff\xff", metadata=WRITE)
        assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in refusal.details
        # Without a token the credential check comes first.
        assert refused(call, b"\xff\xff\xff").code == grpc.StatusCode.UNAUTHENTICATED
    assert running.state() == ControlState()


def test_a_port_in_use_is_refused_with_the_setting_to_change(running: RunningServer) -> None:
    taken = ControlServer(
        config=control_config(listen_address=running.address),
        store=MemoryControlStore(),
        view=StaticDaemonView(),
    )
    with pytest.raises(InvalidInput, match=r"control\.listen_address"):
        asyncio.run(taken.start())


def test_a_stopped_server_starts_again_and_serves() -> None:
    handle = start_server()
    try:
        handle.run(handle.server.stop(0.1))
        handle.run(handle.server.start())
        with grpc.insecure_channel(handle.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = control_pb2_grpc.ControlStub(channel)
            stub.Pin(control_pb2.PinRequest(model="llama-70b"), metadata=WRITE, timeout=5)
    finally:
        stop_server(handle)
