"""Fixtures for the GPU agent's tests: a config under tmp_path and real gRPC agent servers.

The helpers they share (tiny models, Preload to completion, bad-input checks, attach children)
are in :mod:`tests.harness.agent`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig, AuthConfig
from gpu_agent.nvml import Nvml
from gpu_agent.server import serve
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.gpu_agent.fakes import FakeNoGpuNvml
from tests.harness.agent import Running, StartAgent, write_model


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
        # Loopback only; the tests that check auth set a token or mTLS themselves.
        auth=AuthConfig(mode="none"),
    )


@pytest.fixture
async def start_agent(config: AgentConfig) -> AsyncIterator[StartAgent]:
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


@pytest.fixture
def model_file(models_dir: Path) -> Path:
    """``models/m.safetensors``: a tiny model (:func:`write_model`'s defaults) under the roots."""
    path = models_dir / "m.safetensors"
    write_model(path)
    return path
