"""Requests the agent cannot decode are INVALID_ARGUMENT with a message (never UNKNOWN), and the
per-model locks do not outlive the calls that took them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpu_agent.config import AgentConfig
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import StartAgent, expect, preload_all, refused_preload, source

CODE = grpc.StatusCode
SERVICE = pb.DESCRIPTOR.services_by_name["GpuAgent"]


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(2**62, 0), (-(2**62), 0), (253402300800, 0), (0, -1), (0, 2_000_000_000)],
)
async def test_an_out_of_range_deadline_is_invalid_argument(
    start_agent: StartAgent, model_file: Path, config: AgentConfig, seconds: int, nanos: int
) -> None:
    running = await start_agent()
    request = pb.PreloadRequest(
        model_id="m",
        weights=[source(model_file)],
        deadline=Timestamp(seconds=seconds, nanos=nanos),
    )
    details = await refused_preload(running.stub, request, CODE.INVALID_ARGUMENT, clean=config)
    assert "deadline is not a valid Timestamp" in details


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",  # a truncated varint key
        b"\x0a\x05ab",  # a length longer than what follows
        b"\x0f",  # wire type 7 does not exist
        b"\x0a\x02\xc3\x28",  # field 1 not UTF-8 (malformed where field 1 is a string)
    ],
)
async def test_malformed_request_bytes_are_invalid_argument(
    start_agent: StartAgent, payload: bytes
) -> None:
    running = await start_agent()
    for method in SERVICE.methods:
        first = method.input_type.fields_by_number.get(1)
        if payload.startswith(b"\x0a\x02") and (first is None or first.type != first.TYPE_STRING):
            continue  # an unknown field or bytes: those decode
        path = f"/{SERVICE.full_name}/{method.name}"
        if method.server_streaming:
            call = running.channel.unary_stream(path)(payload, timeout=10)
            details = await expect(CODE.INVALID_ARGUMENT, call.read())
        else:
            details = await expect(
                CODE.INVALID_ARGUMENT, running.channel.unary_unary(path)(payload, timeout=10)
            )
        assert "not a valid message" in details, (method.name, details)
    assert (await running.stub.Status(pb.StatusRequest())).node


async def test_model_locks_are_dropped_when_no_call_holds_them(
    start_agent: StartAgent, model_file: Path
) -> None:
    running = await start_agent()
    missing = model_file.with_name("missing.safetensors")
    calls = []
    for index in range(200):
        bogus = pb.Source(uri=missing.as_uri(), sha256="0" * 64)
        calls.append(
            expect(
                CODE.NOT_FOUND,
                preload_all(running.stub, pb.PreloadRequest(model_id=f"m{index}", weights=[bogus])),
            )
        )
        evict = running.stub.Evict(pb.EvictRequest(model_id=f"e{index}"))
        calls.append(expect(CODE.NOT_FOUND, evict))
    await asyncio.gather(*calls)
    kept = pb.PreloadRequest(model_id="kept", weights=[source(model_file)])
    await preload_all(running.stub, kept)
    assert running.agent.model_locks() == 0


async def test_health_watch_still_streams_through_the_decode_guard(
    start_agent: StartAgent,
) -> None:
    running = await start_agent()
    health = health_pb2_grpc.HealthStub(running.channel)
    call = health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await asyncio.wait_for(call.read(), 10)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()
    malformed = running.channel.unary_stream("/grpc.health.v1.Health/Watch")(b"\xff", timeout=10)
    await expect(CODE.INVALID_ARGUMENT, malformed.read())
