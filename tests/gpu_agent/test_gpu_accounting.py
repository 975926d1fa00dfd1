"""GPU-tier accounting, admission and pressure eviction, with FakeNvml and CPU tensors.

There is no GPU here, so NVML is faked (FakeNvml) and the "GPU" allocation is a real torch tensor
on the CPU (``gpu_device``); everything else (gRPC, the agent, the copy engine) is real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import safetensors.torch
import torch

from gpu_agent.config import AgentConfig
from gpu_agent.copy_engine import tensor_views
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.fakes import FakeNvml
from tests.harness.agent import (
    Running,
    StartAgent,
    expect,
    held_tiers,
    is_eviction,
    preload_all,
    refused_preload,
    source,
    watch_until,
    write_model,
)

MB = 1_000_000
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


async def start_with_fake_gpu(
    start_agent: StartAgent, config: AgentConfig, total: int
) -> tuple[Running, FakeNvml]:
    nvml = FakeNvml(total)
    running = await start_agent(config, nvml=nvml, gpu_device=lambda _gpu: torch.device("cpu"))
    nvml.ours = running.agent.gpu_bytes_held
    return running, nvml


def gpu_request(model_id: str, path: Path, value: float) -> pb.PreloadRequest:
    return pb.PreloadRequest(
        model_id=model_id, weights=[source(path)], target_tier=pb.TIER_GPU, predicted_value=value
    )


async def test_gpu_tier_fill_is_exact(start_agent, models_dir: Path, config) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path, numel=600_000)  # > 2 chunks of 1 MiB: several workers
    running, _ = await start_with_fake_gpu(start_agent, config, 100 * MB)
    progress = await preload_all(running.stub, gpu_request("m", path, 1.0))
    assert progress[-1].tier == pb.TIER_GPU
    assert any(p.stage == pb.PreloadProgress.STAGE_GPU and p.gbps > 0 for p in progress)
    holding = running.agent.holding("m")
    assert holding is not None
    assert holding.gpu is not None
    views = tensor_views(holding.gpu.buffer, holding.gpu.placements)
    for name, tensor in tensors.items():
        assert torch.equal(views[name], tensor)
    status = await running.stub.Status(pb.StatusRequest())
    (gpu,) = status.gpus
    assert gpu.ours_bytes == holding.gpu.nbytes
    assert gpu.other_processes_bytes == 0
    assert status.models[0].tier == pb.TIER_GPU


async def test_admission_evicts_only_cheaper_models(start_agent, models_dir: Path, config):
    paths = {}
    for name in ("a", "b", "c"):
        paths[name] = models_dir / f"{name}.safetensors"
        write_model(paths[name], numel=1_000_000, seed=ord(name))  # ~4 MB each
    size = paths["a"].stat().st_size
    # Room for two models beyond the 1000-byte headroom.
    running, _ = await start_with_fake_gpu(start_agent, config, 2 * size + 5000)
    await preload_all(running.stub, gpu_request("a", paths["a"], 10.0))
    await preload_all(running.stub, gpu_request("b", paths["b"], 1.0))
    # c is worth less per byte than both: refused, nothing evicted.
    await refused_preload(running.stub, gpu_request("c", paths["c"], 0.5), EXHAUSTED)
    held = await held_tiers(running.stub)
    assert held["a"] == held["b"] == pb.TIER_GPU
    assert "c" not in held  # a failed preload leaves nothing behind, its disk copy included
    # c worth more than b: b (the cheapest) goes, a stays.
    await preload_all(running.stub, gpu_request("c", paths["c"], 5.0))
    assert await held_tiers(running.stub) == {"a": pb.TIER_GPU, "b": pb.TIER_DISK, "c": pb.TIER_GPU}


async def test_model_larger_than_any_gpu(start_agent, models_dir: Path, config) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=100_000)
    running, _ = await start_with_fake_gpu(start_agent, config, 100_000)
    details = await refused_preload(running.stub, gpu_request("m", path, 1.0), EXHAUSTED)
    assert "largest GPU" in details
    assert list((await running.stub.Status(pb.StatusRequest())).models) == []
    assert not list((Path(config.cache_dir) / "models").rglob("*.safetensors"))


async def test_pressure_from_other_processes_evicts_lowest_density_first(
    start_agent, models_dir: Path, config
) -> None:
    paths = {}
    for name, _value in (("cheap", 1.0), ("dear", 100.0)):
        paths[name] = models_dir / f"{name}.safetensors"
        write_model(paths[name], numel=250_000, seed=len(name))  # ~1 MB each
    size = paths["cheap"].stat().st_size
    running, nvml = await start_with_fake_gpu(start_agent, config, 10 * size)
    await preload_all(running.stub, gpu_request("cheap", paths["cheap"], 1.0))
    await preload_all(running.stub, gpu_request("dear", paths["dear"], 100.0))
    events, collector = await watch_until(running.stub, is_eviction)
    # Another process takes all the free memory: free (0) < headroom (1000 bytes). How fast the
    # agent reacts is measured by the benchmark, not asserted here.
    nvml.other_bytes = 8 * size
    await asyncio.wait_for(collector, 10)
    evicted = [e for e in events if e.kind == pb.Event.KIND_EVICTED]
    assert [e.model_id for e in evicted] == ["cheap"]
    assert any(e.kind == pb.Event.KIND_PRESSURE for e in events)
    assert await held_tiers(running.stub) == {"cheap": pb.TIER_DISK, "dear": pb.TIER_GPU}
    status = await running.stub.Status(pb.StatusRequest())
    assert status.gpus[0].other_processes_bytes == nvml.other_bytes


async def test_attached_models_are_not_evicted_under_pressure(
    start_agent, models_dir: Path, config
) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=250_000)
    size = path.stat().st_size
    running, nvml = await start_with_fake_gpu(start_agent, config, 4 * size)
    await preload_all(running.stub, gpu_request("m", path, 1.0))
    lease = await running.stub.Attach(pb.AttachRequest(model_id="m", lease_ttl_s=600))
    # A CPU "GPU" allocation has no CUDA IPC handle: the agent offers the disk files instead.
    assert lease.tier == pb.TIER_DISK
    nvml.other_bytes = 4 * size
    assert running.agent.relieve_pressure() == 0
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION, running.stub.Evict(pb.EvictRequest(model_id="m"))
    )
    await running.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    assert running.agent.relieve_pressure() > 0
    loaded = safetensors.torch.load_file(lease.files[0].path)
    assert set(loaded) == {t.name for t in lease.tensors}
