"""Preload, Status, Watch, Evict over real gRPC on a node without a GPU (host tiers only)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import safetensors.torch
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from gpu_agent.config import AgentConfig, AuthConfig
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.httpserver import serve_files
from tests.harness.agent import expect, leftovers, preload_all, source, watch_until, write_model


async def test_preload_without_gpu_lands_in_host_memory_and_says_so(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    running = await start_agent()
    progress = await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="org/m-1", weights=[source(path)], predicted_value=5.0),
    )
    stages = [p.stage for p in progress]
    assert stages[0] == pb.PreloadProgress.STAGE_QUEUED
    assert pb.PreloadProgress.STAGE_FETCHING in stages
    assert pb.PreloadProgress.STAGE_HOST in stages
    done = progress[-1]
    assert done.stage == pb.PreloadProgress.STAGE_DONE
    assert done.tier == pb.TIER_HOST
    assert "no GPU" in done.message
    assert done.bytes_done == path.stat().st_size

    status = await running.stub.Status(pb.StatusRequest())
    assert not status.gpu_available
    assert status.gpu_unavailable_reason
    (held,) = status.models
    assert held.model_id == "org/m-1"
    assert held.tier == pb.TIER_HOST
    assert held.bytes == path.stat().st_size
    assert held.value_density == pytest.approx(5.0 / path.stat().st_size)
    host = next(t for t in status.tiers if t.tier == pb.TIER_HOST)
    assert host.used_bytes == path.stat().st_size
    assert host.models == 1

    shm_files = leftovers(Path(config.shm_dir))
    assert len(shm_files) == 1
    loaded = safetensors.torch.load_file(str(shm_files[0]))
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


async def test_preload_is_idempotent(start_agent, models_dir: Path) -> None:
    path = models_dir / "m.safetensors"
    write_model(path)
    running = await start_agent()
    request = pb.PreloadRequest(model_id="m", weights=[source(path)], target_tier=pb.TIER_HOST)
    await preload_all(running.stub, request)
    again = await preload_all(running.stub, request)
    assert [p.stage for p in again] == [
        pb.PreloadProgress.STAGE_QUEUED,
        pb.PreloadProgress.STAGE_DONE,
    ]
    assert again[-1].message == "already held"


async def test_disk_tier_only(start_agent, models_dir: Path, config: AgentConfig) -> None:
    path = models_dir / "m.safetensors"
    write_model(path)
    running = await start_agent()
    progress = await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="m", weights=[source(path)], target_tier=pb.TIER_DISK),
    )
    assert progress[-1].tier == pb.TIER_DISK
    assert leftovers(Path(config.shm_dir)) == []
    assert len([p for p in leftovers(Path(config.cache_dir)) if p.suffix == ".safetensors"]) == 1


async def test_http_source_uses_parallel_range_requests(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    path = models_dir / "big.safetensors"
    tensors = write_model(path, numel=1_000_000)  # ~4 MB: four 1 MiB ranges
    running = await start_agent()
    with serve_files(models_dir) as (base, ranges):
        request = pb.PreloadRequest(
            model_id="m",
            weights=[pb.Source(uri=base + path.name, sha256=source(path).sha256)],
            target_tier=pb.TIER_HOST,
        )
        progress = await preload_all(running.stub, request)
    assert progress[-1].stage == pb.PreloadProgress.STAGE_DONE
    assert len(ranges) >= 4
    (shm_file,) = leftovers(Path(config.shm_dir))
    assert torch.equal(safetensors.torch.load_file(str(shm_file))["layer.weight"],
                       tensors["layer.weight"])  # fmt: skip


async def test_watch_sees_load_and_evict(start_agent, models_dir: Path, config: AgentConfig):
    path = models_dir / "m.safetensors"
    write_model(path)
    running = await start_agent()
    events, collector = await watch_until(
        running.stub,
        lambda e: e.kind == pb.Event.KIND_EVICTED and e.tier == pb.TIER_DISK,
        model_ids=["m"],
    )
    await preload_all(running.stub, pb.PreloadRequest(model_id="m", weights=[source(path)]))
    evicted = await running.stub.Evict(pb.EvictRequest(model_id="m"))
    assert evicted.bytes_freed >= 2 * path.stat().st_size  # host copy + disk copy
    assert set(evicted.tiers) == {pb.TIER_HOST, pb.TIER_DISK}
    await asyncio.wait_for(collector, 10)
    kinds = [e.kind for e in events]
    assert kinds[0] == pb.Event.KIND_LOADED
    assert kinds.count(pb.Event.KIND_EVICTED) == 2
    assert leftovers(Path(config.shm_dir)) == []
    assert leftovers(Path(config.cache_dir) / "models") == []
    status = await running.stub.Status(pb.StatusRequest())
    assert list(status.models) == []


async def _list_services(channel: grpc.aio.Channel) -> set[str]:
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflect.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    await call.done_writing()
    return {s.name for s in answer.list_services_response.service}


async def test_reflection_is_off_unless_configured(start_agent) -> None:
    running = await start_agent()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list_services(running.channel)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_and_reflection_are_served(start_agent, config: AgentConfig) -> None:
    running = await start_agent(config.model_copy(update={"reflection": True}))
    health = health_pb2_grpc.HealthStub(running.channel)
    reply = await health.Check(
        health_pb2.HealthCheckRequest(service="prewarm.gpu_agent.v1.GpuAgent")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "prewarm.gpu_agent.v1.GpuAgent" in await _list_services(running.channel)


async def test_bearer_token_is_required(start_agent, config: AgentConfig) -> None:
    secured = config.model_copy(
        update={"auth": AuthConfig(mode="token", token=SecretStr("s3cret"))}
    )
    running = await start_agent(secured)
    denied = grpc.StatusCode.UNAUTHENTICATED
    await expect(denied, running.stub.Status(pb.StatusRequest()))
    wrong = (("authorization", "Bearer x"),)
    await expect(denied, running.stub.Status(pb.StatusRequest(), metadata=wrong))
    await expect(denied, preload_all(running.stub, pb.PreloadRequest(model_id="m")))
    ok = await running.stub.Status(
        pb.StatusRequest(), metadata=(("authorization", "Bearer s3cret"),)
    )
    assert not ok.gpu_available
