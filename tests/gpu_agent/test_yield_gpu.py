"""GPU co-residency (YieldGpu): the agent gives a starting replica its GPU memory.

Real gRPC agents with FakeNvml and "GPU" allocations on the CPU (no GPU here), a virtual monotonic
clock for the hold, and ``prewarm handoff wait`` run as a real process against a real agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import torch

from gpu_agent.config import AgentConfig, AuthConfig
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.fakes import FakeMultiNvml, FakeNvml
from tests.harness.agent import (
    Running,
    StartAgent,
    expect,
    held_tiers,
    preload_all,
    refused_preload,
    source,
    write_model,
)

MB = 1_000_000
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gpu_request(model_id: str, path: Path, *, gpu_uuid: str = "") -> pb.PreloadRequest:
    return pb.PreloadRequest(
        model_id=model_id,
        weights=[source(path)],
        target_tier=pb.TIER_GPU,
        predicted_value=1.0,
        gpu_uuid=gpu_uuid,
    )


async def start_one_gpu(
    start_agent: StartAgent, config: AgentConfig, clock: Clock
) -> tuple[Running, FakeNvml]:
    nvml = FakeNvml(100 * MB)
    running = await start_agent(
        config, nvml=nvml, gpu_device=lambda _gpu: torch.device("cpu"), monotonic=clock
    )
    nvml.ours = running.agent.gpu_bytes_held
    return running, nvml


async def test_yield_moves_gpu_models_to_host_and_refuses_gpu_preloads_until_the_hold_ends(
    start_agent, models_dir: Path, config
) -> None:
    clock = Clock()
    running, _ = await start_one_gpu(start_agent, config, clock)
    paths = {}
    for name in ("a", "b"):
        paths[name] = models_dir / f"{name}.safetensors"
        write_model(paths[name], numel=100_000, seed=ord(name))
    await preload_all(running.stub, gpu_request("a", paths["a"]))
    held = running.agent.gpu_bytes_held()
    assert held > 0

    response = await running.stub.YieldGpu(
        pb.YieldGpuRequest(reason="replica of llama starting", hold_s=60)
    )
    assert list(response.gpu_uuids) == [FakeNvml.UUID]
    assert list(response.demoted_model_ids) == ["a"]
    assert response.gpu_bytes_freed == held
    assert running.agent.gpu_bytes_held() == 0
    status = await running.stub.Status(pb.StatusRequest())
    (gpu,) = status.gpus
    assert gpu.HasField("yielded_until")
    assert gpu.yield_reason == "replica of llama starting"
    assert gpu.ours_bytes == 0
    until = gpu.yielded_until.ToNanoseconds() / 1e9
    assert 50 < until - time.time() <= 60
    assert abs(until - response.yielded_until.ToNanoseconds() / 1e9) < 1
    assert {m.model_id: m.tier for m in status.models} == {"a": pb.TIER_HOST}
    gpu_usage = next(t for t in status.tiers if t.tier == pb.TIER_GPU)
    assert gpu_usage.capacity_bytes == 0  # no room on a yielded GPU

    # Nothing lands on the GPU meanwhile: a new model, a held one, with or without a uuid.
    details = await refused_preload(running.stub, gpu_request("b", paths["b"]), PRECONDITION)
    assert "yielded" in details
    assert "b" not in await held_tiers(running.stub)  # refused before anything was fetched
    await refused_preload(running.stub, gpu_request("a", paths["a"]), PRECONDITION)
    details = await refused_preload(
        running.stub, gpu_request("a", paths["a"], gpu_uuid=FakeNvml.UUID), PRECONDITION
    )
    assert "replica of llama starting" in details
    # The host tier still works.
    host = pb.PreloadRequest(model_id="b", weights=[source(paths["b"])], target_tier=pb.TIER_HOST)
    await preload_all(running.stub, host)

    clock.now += 61  # the hold ends
    progress = await preload_all(running.stub, gpu_request("a", paths["a"]))
    assert progress[-1].tier == pb.TIER_GPU
    status = await running.stub.Status(pb.StatusRequest())
    assert not status.gpus[0].HasField("yielded_until")
    assert status.gpus[0].yield_reason == ""


async def test_a_second_yield_renews_the_hold(start_agent, models_dir: Path, config) -> None:
    clock = Clock()
    running, _ = await start_one_gpu(start_agent, config, clock)
    path = models_dir / "a.safetensors"
    write_model(path)
    await running.stub.YieldGpu(pb.YieldGpuRequest(hold_s=60))
    clock.now += 50
    await running.stub.YieldGpu(pb.YieldGpuRequest(hold_s=60))
    clock.now += 50  # 100 s after the first, 50 s after the second
    await refused_preload(running.stub, gpu_request("a", path), PRECONDITION)
    clock.now += 11
    await preload_all(running.stub, gpu_request("a", path))


async def test_the_default_hold_is_the_configured_one(
    start_agent, models_dir: Path, config
) -> None:
    clock = Clock()
    config = config.model_copy(update={"yield_hold_s": 30.0})
    running, _ = await start_one_gpu(start_agent, config, clock)
    path = models_dir / "a.safetensors"
    write_model(path)
    await running.stub.YieldGpu(pb.YieldGpuRequest())
    clock.now += 29
    await refused_preload(running.stub, gpu_request("a", path), PRECONDITION)
    clock.now += 2
    await preload_all(running.stub, gpu_request("a", path))


async def test_yielding_one_gpu_places_gpu_preloads_on_another(
    start_agent, models_dir: Path, config
) -> None:
    nvml = FakeMultiNvml(100 * MB, count=2)
    running = await start_agent(config, nvml=nvml, gpu_device=lambda _gpu: torch.device("cpu"))
    nvml.ours = running.agent.gpu_bytes_held
    first, second = nvml.uuids
    paths = {}
    for name in ("a", "b"):
        paths[name] = models_dir / f"{name}.safetensors"
        write_model(paths[name], numel=10_000, seed=ord(name))
    await preload_all(running.stub, gpu_request("a", paths["a"], gpu_uuid=first))

    response = await running.stub.YieldGpu(pb.YieldGpuRequest(gpu_uuids=[first]))
    assert list(response.gpu_uuids) == [first]
    assert running.agent.gpu_bytes_held(first) == 0
    status = await running.stub.Status(pb.StatusRequest())
    yielded = {g.uuid for g in status.gpus if g.HasField("yielded_until")}
    assert yielded == {first}

    await preload_all(running.stub, gpu_request("b", paths["b"]))
    holding = running.agent.holding("b")
    assert holding is not None
    assert holding.gpu is not None
    assert holding.gpu.gpu_uuid == second
    details = await refused_preload(
        running.stub, gpu_request("a", paths["a"], gpu_uuid=first), PRECONDITION
    )
    assert first in details


async def test_bad_yields_are_refused_and_a_node_without_gpu_has_nothing_to_yield(
    start_agent, config
) -> None:
    running, _ = await start_one_gpu(start_agent, config, Clock())
    stub = running.stub
    await expect(grpc.StatusCode.INVALID_ARGUMENT, stub.YieldGpu(pb.YieldGpuRequest(hold_s=-1)))
    too_long = pb.YieldGpuRequest(hold_s=config.yield_max_hold_s + 1)
    await expect(grpc.StatusCode.INVALID_ARGUMENT, stub.YieldGpu(too_long))
    for bad in (pb.YieldGpuRequest(hold_s=float("inf")), pb.YieldGpuRequest(reason="x" * 300)):
        await expect(grpc.StatusCode.INVALID_ARGUMENT, stub.YieldGpu(bad))
    unknown = pb.YieldGpuRequest(gpu_uuids=["GPU-nope"])
    await expect(grpc.StatusCode.NOT_FOUND, stub.YieldGpu(unknown))

    no_gpu = await start_agent(config)  # FakeNoGpuNvml
    response = await no_gpu.stub.YieldGpu(pb.YieldGpuRequest())
    assert list(response.gpu_uuids) == []


async def test_yield_needs_the_token(start_agent, config) -> None:
    config = config.model_copy(update={"auth": AuthConfig(mode="token", token="s3cret")})
    running, _ = await start_one_gpu(start_agent, config, Clock())
    await expect(grpc.StatusCode.UNAUTHENTICATED, running.stub.YieldGpu(pb.YieldGpuRequest()))
    response = await running.stub.YieldGpu(
        pb.YieldGpuRequest(), metadata=(("authorization", "Bearer s3cret"),)
    )
    assert list(response.gpu_uuids) == [FakeNvml.UUID]


async def test_without_host_room_a_demoted_model_stays_on_disk(
    start_agent, models_dir: Path, config
) -> None:
    path = models_dir / "a.safetensors"
    write_model(path, numel=100_000)
    config = config.model_copy(update={"host_max_bytes": 1000})
    running, _ = await start_one_gpu(start_agent, config, Clock())
    await preload_all(running.stub, gpu_request("a", path))
    response = await running.stub.YieldGpu(pb.YieldGpuRequest())
    assert list(response.kept_on_disk_model_ids) == ["a"]
    assert await held_tiers(running.stub) == {"a": pb.TIER_DISK}


def _handoff_wait(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("PREWARM_AGENT_TOKEN", None)
    command = [sys.executable, "-m", "prewarm", "handoff", "wait", "--model", "a",
               "--agent", f"127.0.0.1:{port}", "--timeout", "0s", *extra]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )


async def test_handoff_wait_frees_the_gpu_before_the_engine_starts(
    start_agent, models_dir: Path, config
) -> None:
    path = models_dir / "a.safetensors"
    write_model(path, numel=100_000)
    running, _ = await start_one_gpu(start_agent, config, Clock())
    await preload_all(running.stub, gpu_request("a", path))

    kept = await asyncio.to_thread(_handoff_wait, running.port, "--no-yield-gpu")
    assert kept.returncode == 0, kept.stderr
    assert running.agent.gpu_bytes_held() > 0

    done = await asyncio.to_thread(_handoff_wait, running.port, "--yield-hold", "5m")
    assert done.returncode == 0, done.stderr
    assert "yielded" in done.stderr
    assert running.agent.gpu_bytes_held() == 0
    status = await running.stub.Status(pb.StatusRequest())
    (gpu,) = status.gpus
    assert gpu.yield_reason == "replica of a starting"
    assert await held_tiers(running.stub) == {"a": pb.TIER_HOST}


async def test_a_gpu_load_in_flight_is_stopped_or_demoted_before_the_yield_returns(
    start_agent, models_dir: Path, config
) -> None:
    path = models_dir / "big.safetensors"
    write_model(path, numel=5_000_000)  # ~20 MB: twenty 1 MiB chunks into the "GPU"
    running, _ = await start_one_gpu(start_agent, config, Clock())
    host = pb.PreloadRequest(model_id="big", weights=[source(path)], target_tier=pb.TIER_HOST)
    await preload_all(running.stub, host)
    stream = running.stub.Preload(gpu_request("big", path))
    async for progress in stream:
        if progress.stage == pb.PreloadProgress.STAGE_GPU:
            break
    response = await running.stub.YieldGpu(pb.YieldGpuRequest(reason="starting"))
    # Whether the copy was cancelled or had just finished, the GPU is free when YieldGpu returns.
    assert running.agent.gpu_bytes_held() == 0
    assert running.agent.loading() == frozenset()
    assert list(response.kept_on_disk_model_ids) == []
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in stream:
            pass
    assert await stream.code() in (grpc.StatusCode.OK, PRECONDITION)
    assert await held_tiers(running.stub) == {"big": pb.TIER_HOST}
