"""CUDA-only: real NVML, real GPU allocations, CUDA IPC hand-off to another process, pressure
from another process's allocation. Skipped without CUDA (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from common.tiers import Tier
from gpu_agent.config import AgentConfig
from gpu_agent.copy_engine import tensor_views
from gpu_agent.nvml import PynvmlNvml
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import (
    Running,
    StartAgent,
    attach_child,
    expected_sums,
    is_eviction,
    preload_all,
    source,
    watch_until,
    write_model,
)

pytestmark = [
    pytest.mark.gpu,
    # tests/conftest.py skips gpu tests without CUDA; repeated here so this directory also runs
    # on its own (--confcutdir tests/gpu_agent, as hack/gpu-check.sh does on a bare GPU machine).
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


async def start_gpu_agent(start_agent: StartAgent, config: AgentConfig) -> Running:
    running = await start_agent(config, nvml=PynvmlNvml())
    assert running.agent.gpu_unavailable_reason() is None
    return running


async def test_preload_to_gpu_with_real_nvml(start_agent, models_dir: Path, config) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path, numel=3_000_000)
    running = await start_gpu_agent(start_agent, config)
    progress = await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="m", weights=[source(path)], predicted_value=1.0),
    )
    assert progress[-1].tier == pb.TIER_GPU
    holding = running.agent.holding("m")
    assert holding is not None
    assert holding.gpu is not None
    assert holding.gpu.buffer.is_cuda
    views = tensor_views(holding.gpu.buffer, holding.gpu.placements)
    for name, tensor in tensors.items():
        assert torch.equal(views[name].cpu(), tensor)
    status = await running.stub.Status(pb.StatusRequest())
    assert status.gpu_available
    gpu = status.gpus[0]
    assert gpu.total_bytes > 0
    assert gpu.free_bytes > 0
    assert gpu.ours_bytes == holding.gpu.nbytes
    nbytes = holding.gpu.nbytes
    evicted = await running.stub.Evict(pb.EvictRequest(model_id="m", tier=pb.TIER_GPU))
    assert evicted.bytes_freed == nbytes
    assert (await running.stub.Status(pb.StatusRequest())).gpus[0].ours_bytes == 0


async def test_cuda_ipc_attach_from_another_process(
    start_agent, models_dir: Path, config, repo_root: Path
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path, numel=1_000_000)
    running = await start_gpu_agent(start_agent, config)
    await preload_all(running.stub, pb.PreloadRequest(model_id="m", weights=[source(path)]))
    with attach_child(repo_root, running, "m", Tier.GPU) as child:
        first = await child.report()
        assert first["tier"] == "gpu", first
        assert first["devices"] == ["cuda:0"]
        assert first["sums"] == pytest.approx(expected_sums(tensors), rel=1e-6)
        # Zero-copy: write into the agent's allocation; the child sees it through its IPC mapping.
        holding = running.agent.holding("m")
        assert holding is not None
        assert holding.gpu is not None
        views = tensor_views(holding.gpu.buffer, holding.gpu.placements)
        views["embed"].fill_(1)
        torch.cuda.synchronize()
        child.poke()
        second = await child.report()
        assert second["sums"]["embed"] == 21.0  # type: ignore[index]
        assert await child.exit_code(60) == 0


async def test_ipc_unreachable_falls_back_to_a_slower_tier(
    start_agent, models_dir: Path, config, repo_root: Path
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    running = await start_gpu_agent(start_agent, config)
    await preload_all(running.stub, pb.PreloadRequest(model_id="m", weights=[source(path)]))
    no_cuda = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    with attach_child(repo_root, running, "m", Tier.GPU, env=no_cuda) as child:
        first = await child.report()
        assert first["tier"] == "disk"
        assert first["sums"] == pytest.approx(expected_sums(tensors))


async def test_pressure_from_another_process_evicts_our_model(
    start_agent, models_dir: Path, config, repo_root: Path
) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=64_000_000)  # 256 MB
    gib = 1024**3
    running = await start_gpu_agent(
        start_agent, config.model_copy(update={"headroom_bytes": 2 * gib})
    )
    await preload_all(running.stub, pb.PreloadRequest(model_id="m", weights=[source(path)]))
    free = (await running.stub.Status(pb.StatusRequest())).gpus[0].free_bytes
    events, collector = await watch_until(running.stub, is_eviction, settle_s=0.3)
    take = free - gib  # leaves 1 GiB free: below the 2 GiB headroom
    hog = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c",
         "import sys, torch; x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device='cuda');"
         "torch.cuda.synchronize(); print('allocated', flush=True); sys.stdin.readline()",
         str(take)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert hog.stdout is not None
        line = await asyncio.to_thread(hog.stdout.readline)
        assert line.strip() == "allocated"
        await asyncio.wait_for(collector, 10)  # the benchmark measures how fast
        assert [e.model_id for e in events if e.kind == pb.Event.KIND_EVICTED] == ["m"]
        status = await running.stub.Status(pb.StatusRequest())
        assert status.gpus[0].ours_bytes == 0
        assert status.gpus[0].other_processes_bytes >= take
    finally:
        hog.kill()
        hog.wait(30)


@pytest.fixture
def tmpfs_shm() -> Iterator[Path]:
    """A directory in /dev/shm (tmpfs), removed afterwards.

    Linux (>= 6.5) refuses long-term write pins of file-backed pages outside shmem, so
    cudaHostRegister of a host-tier file only works on tmpfs, as in production; pytest's tmp_path
    is usually on disk.
    """
    directory = Path(tempfile.mkdtemp(prefix="prewarm-test-", dir="/dev/shm"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def test_host_tier_is_page_locked_and_fills_the_gpu_from_it(
    start_agent, models_dir: Path, config, tmpfs_shm: Path
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path, numel=2_000_000)
    config = config.model_copy(update={"shm_dir": str(tmpfs_shm / "shm")})
    running = await start_gpu_agent(start_agent, config)
    request = pb.PreloadRequest(model_id="m", weights=[source(path)], target_tier=pb.TIER_HOST)
    await preload_all(running.stub, request)
    holding = running.agent.holding("m")
    assert holding is not None
    assert len(holding.host_pinned) == 1
    upgrade = pb.PreloadRequest(model_id="m", target_tier=pb.TIER_GPU)  # no sources: held
    progress = await preload_all(running.stub, upgrade)
    assert progress[-1].tier == pb.TIER_GPU
    assert holding.gpu is not None
    views = tensor_views(holding.gpu.buffer, holding.gpu.placements)
    for name, tensor in tensors.items():
        assert torch.equal(views[name].cpu(), tensor)
    await running.stub.Evict(pb.EvictRequest(model_id="m"))
    assert holding.host_pinned == {}
