"""Fixtures for the GPU agent's tests: tiny safetensors models, configs, a real gRPC server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import safetensors.torch
import torch

from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.nvml import Nvml
from gpu_agent.server import serve
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.gpu_agent.fakes import FakeNoGpuNvml


def write_model(path: Path, *, seed: int = 0, numel: int = 1000) -> dict[str, torch.Tensor]:
    """Write a tiny safetensors model with mixed dtypes; return its tensors."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "layer.weight": torch.randn(numel, generator=generator).reshape(-1, 10),
        "layer.bias": torch.randn(10, generator=generator).to(torch.float16),
        "embed": torch.randint(0, 100, (7, 3), generator=generator, dtype=torch.int64),
        "scale": torch.randn(3, generator=generator).to(torch.bfloat16),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path))
    return tensors


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source(path: Path) -> pb.Source:
    return pb.Source(uri=path.as_uri(), sha256=sha256(path))


@pytest.fixture
def repo_root() -> Path:
    """The repository root (also defined by tests/conftest.py; here so that this directory's
    tests run on their own, e.g. ``--confcutdir tests/gpu_agent`` on a bare GPU machine)."""
    return Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


@pytest.fixture
def config(tmp_path: Path, models_dir: Path) -> AgentConfig:
    """Tiers under tmp_path (shm too, to keep /dev/shm clean); file sources under models/."""
    return AgentConfig(
        listen="127.0.0.1:0",
        cache_dir=str(tmp_path / "cache"),
        shm_dir=str(tmp_path / "shm"),
        headroom_bytes=1000,
        host_headroom_bytes=0,
        disk_headroom_bytes=0,
        allowed_schemes=["file", "http"],
        allowed_file_roots=[str(models_dir)],
        allowed_http_prefixes=["http://127.0.0.1:"],
        allowed_install_roots=[str(tmp_path / "compile")],
        chunk_bytes=1024**2,
        copy_workers=2,
        http_range_bytes=1024**2,
        pressure_poll_interval_s=0.05,
        shutdown_grace_s=0.5,
        metrics_port=0,
    )


@dataclass
class Running:
    """A real agent server on 127.0.0.1 and an aio stub talking to it."""

    agent: Agent
    stub: pb_grpc.GpuAgentStub
    channel: grpc.aio.Channel
    port: int
    stop: asyncio.Event


StartAgent = Callable[..., "asyncio.Future[Running]"]


@pytest.fixture
async def start_agent(config: AgentConfig) -> AsyncIterator[Callable[..., object]]:
    """Start agents (real gRPC servers on port 0); all are stopped at the end of the test."""
    started: list[tuple[Running, asyncio.Task[None]]] = []

    async def start(
        cfg: AgentConfig | None = None,
        *,
        nvml: Nvml | None = None,
        agent: Agent | None = None,
        **agent_kwargs: object,
    ) -> Running:
        cfg = cfg or config
        if agent is None:
            agent = Agent(cfg, nvml=nvml or FakeNoGpuNvml(), **agent_kwargs)  # type: ignore[arg-type]
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(
            serve(cfg, agent=agent, stop=stop, on_ready=ready.set_result, handle_signals=False)
        )
        port = await asyncio.wait_for(ready, 30)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        running = Running(agent, pb_grpc.GpuAgentStub(channel), channel, port, stop)
        started.append((running, task))
        return running

    yield start
    for running, task in started:
        await running.channel.close()
        running.stop.set()
        await asyncio.wait_for(task, 30)


async def preload_all(
    stub: pb_grpc.GpuAgentStub, request: pb.PreloadRequest, **kwargs: object
) -> list[pb.PreloadProgress]:
    """Run a Preload to completion; return every progress message."""
    return [item async for item in stub.Preload(request, **kwargs)]


def leftovers(root: Path) -> list[Path]:
    """Files under ``root`` (partial files included)."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
