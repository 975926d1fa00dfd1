"""Fuzz the control service and the KEDA scaler with random protobuf messages (bounded runs).

Messages are drawn from the services' own descriptors: every field gets hostile values (huge and
negative numbers, NaN and infinities, unknown enum values, long and odd strings) mixed with
plausible ones so validation paths past the first check are reached too. Every call must end with
OK or a deliberate status (never UNKNOWN/INTERNAL, which mean an unhandled exception), the server
must stay healthy and responsive, and whatever got stored must satisfy the caps.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.ids import ModelId
from prewarm.control.view import StaticDaemonView
from protos import control_pb2, externalscaler_pb2
from tests.control.conftest import (
    WRITE_TOKEN,
    Clock,
    control_config,
    make_forecast,
    start_server,
    stop_server,
)
from tests.harness.rpc import bearer, refusal_of

pytestmark = pytest.mark.fuzz

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
"""The deliberate refusals. DEADLINE_EXCEEDED is not one: a wedged server must fail the run."""
PLAUSIBLE_STRINGS = ["llama-70b", "mistral-7b", "req-0000000000000001", "0.9", "5m", "2", ""]

_F = FieldDescriptor


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _F.TYPE_STRING:
        return st.sampled_from(PLAUSIBLE_STRINGS) | st.text(max_size=300)
    if kind == _F.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
            [0.0, 1.0, -1.0, 60.0, 7200.0, 1e300, 0.5, 0.9]
        )
    if kind == _F.TYPE_ENUM:
        return st.integers(-3, 10)
    if kind in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 100)
    if kind in (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if kind in (_F.TYPE_UINT64, _F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.integers(0, 2**32 - 1)


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A random message of type ``descriptor`` (fields set at random, nested up to depth 2)."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            keys = st.sampled_from(
                ["model", "quantile", "leadTime", "targetPerReplica", "activationProbability"]
            ) | st.text(max_size=20)
            values = st.sampled_from(PLAUSIBLE_STRINGS) | st.text(max_size=40)
            getattr(message, field.name).update(draw(st.dictionaries(keys, values, max_size=5)))
        elif field.message_type is not None:
            if depth >= 2:
                continue
            if field.is_repeated:
                for item in draw(st.lists(messages(field.message_type, depth + 1), max_size=2)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(messages(field.message_type, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=4)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def _methods() -> list[tuple[str, MethodDescriptor]]:
    found = []
    for module in (control_pb2, externalscaler_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append((f"/{service.full_name}/{method.name}", method))
    return found


METHODS = _methods()


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, MethodDescriptor, Message]:
    path, method = draw(st.sampled_from(METHODS))
    return path, method, draw(messages(method.input_type))


def _invoke(
    channel: grpc.Channel, path: str, method: MethodDescriptor, request: Message
) -> grpc.StatusCode:
    response_class = GetMessageClass(method.output_type)
    metadata = bearer(WRITE_TOKEN)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )(request, metadata=metadata, timeout=5)
            next(iter(stream), None)
            stream.cancel()
            return grpc.StatusCode.OK
        channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )(request, metadata=metadata, timeout=5)
    except grpc.RpcError as error:
        refusal = refusal_of(error)
        code, details = refusal.code, refusal.details
    else:
        return grpc.StatusCode.OK
    if code == grpc.StatusCode.CANCELLED and method.server_streaming:
        return grpc.StatusCode.OK
    assert code in ALLOWED, (path, request, code, details)
    return code


def test_random_messages_never_crash_or_wedge_the_server() -> None:
    clock = Clock()
    view = StaticDaemonView(models={ModelId("llama-70b"), ModelId("mistral-7b")})
    view.forecast_map[ModelId("llama-70b")] = make_forecast("llama-70b", start_s=clock())
    config = control_config(max_active_requests=20, max_call_s=5.0)
    handle = start_server(config=config, view=view, clock=clock)
    seen: set[grpc.StatusCode] = set()
    try:
        with grpc.insecure_channel(handle.address) as channel:

            @settings(
                max_examples=400,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(calls(), st.sampled_from([0.0, 0.0, 1.0, 600.0, 86400.0]), st.booleans())
            def one_call(
                call: tuple[str, MethodDescriptor, Message], advance_s: float, leader: bool
            ) -> None:
                # Time passes (requests expire) and leadership flips between calls.
                clock.advance(advance_s)
                view.leader = leader or advance_s == 0.0
                seen.add(_invoke(channel, *call))

            one_call()

            @settings(max_examples=100, deadline=None)
            @given(st.sampled_from(METHODS), st.binary(max_size=200))
            def raw_bytes(target: tuple[str, MethodDescriptor], payload: bytes) -> None:
                path, method = target
                try:
                    # With a valid token, so the bytes reach the decoder, not only the auth check.
                    metadata = bearer(WRITE_TOKEN)
                    if method.server_streaming:
                        stream = channel.unary_stream(path)(payload, metadata=metadata, timeout=5)
                        next(iter(stream), None)
                        stream.cancel()
                    else:
                        channel.unary_unary(path)(payload, metadata=metadata, timeout=5)
                except grpc.RpcError as error:
                    refusal = refusal_of(error)
                    code, details = refusal.code, refusal.details
                else:
                    return
                if code == grpc.StatusCode.CANCELLED and method.server_streaming:
                    return
                assert code in ALLOWED, (path, payload, code, details)

            raw_bytes()

            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            from protos import control_pb2_grpc

            # Nothing is wedged: a sound write still goes through (store lock free, leader back).
            view.leader = True
            control = control_pb2_grpc.ControlStub(channel)
            warmed = control.Warm(
                control_pb2.WarmRequest(model="mistral-7b", replicas=1, duration_s=60),
                metadata=bearer(WRITE_TOKEN),
                timeout=5,
            )
            assert warmed.request.state == "active"
            listing = control.ListRequests(
                control_pb2.ListRequestsRequest(),
                metadata=bearer(WRITE_TOKEN),
                timeout=5,
            )
        assert {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION} <= seen
        state = handle.state()
        assert len(state.requests) <= config.max_active_requests
        assert len(listing.requests) == len(state.requests)
        for request in state.requests:
            assert request.replicas is not None or request.tier is not None
            assert (
                request.replicas is None or 1 <= request.replicas <= config.max_replicas_per_request
            )
            assert math.isfinite(request.start_s)
            assert math.isfinite(request.end_s)
            assert 0 < request.end_s - request.start_s <= config.max_duration_s
            assert request.model in view.known_models()
    finally:
        stop_server(handle)
