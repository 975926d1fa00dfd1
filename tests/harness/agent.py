"""Helpers for the GPU agent's tests: tiny models, a running agent, bad input, attach children.

The fixtures that use these (a config under ``tmp_path``, ``start_agent`` for real gRPC servers on
127.0.0.1) live in ``tests/gpu_agent/conftest.py``. Nothing here imports a cluster harness: the
GPU check (``hack/gpu-check.sh``) runs ``tests/gpu_agent`` alone on a bare GPU machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import safetensors.torch
import torch

from common.tiers import Tier
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.tier_roots import MARKER
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc

# --------------------------------------------------------------------------------- models


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
    """A file:// source of ``path`` with its checksum."""
    return pb.Source(uri=path.as_uri(), sha256=sha256(path))


def expected_sums(tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor sums, as :mod:`tests.gpu_agent.attach_child` reports them."""
    return {name: float(t.double().sum()) for name, t in sorted(tensors.items())}


def leftovers(root: Path) -> list[Path]:
    """Files under ``root`` (partial files included; the agent's ownership markers, which sit
    beside the files they vouch for, are not counted)."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER)


def assert_clean(config: AgentConfig) -> None:
    """Neither the disk tier's model directories nor the host tier hold any file."""
    assert leftovers(Path(config.cache_dir) / "models") == []
    assert leftovers(Path(config.shm_dir)) == []


# ---------------------------------------------------------------------------- the agent


@dataclass
class Running:
    """A real agent server on 127.0.0.1 and an aio stub talking to it."""

    agent: Agent
    stub: pb_grpc.GpuAgentStub
    channel: grpc.aio.Channel
    port: int
    stop: asyncio.Event


StartAgent = Callable[..., Awaitable[Running]]
"""The ``start_agent`` fixture: ``await start_agent(config=None, *, nvml=..., agent=..., **kw)``."""


async def preload_all(
    stub: pb_grpc.GpuAgentStub, request: pb.PreloadRequest, **kwargs: object
) -> list[pb.PreloadProgress]:
    """Run a Preload to completion; return every progress message."""
    return [item async for item in stub.Preload(request, **kwargs)]


async def expect(code: grpc.StatusCode, call: Awaitable[object]) -> str:
    """Await a call that must fail with ``code``; return the status details."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == code, failure.value.details()
    return failure.value.details() or ""


async def refused_preload(
    stub: pb_grpc.GpuAgentStub,
    request: pb.PreloadRequest,
    code: grpc.StatusCode,
    *,
    clean: AgentConfig | None = None,
) -> str:
    """Run a Preload that must fail with ``code``; return the status details.

    With ``clean``, also check that the failure left no file in that config's tiers.
    """
    details = await expect(code, preload_all(stub, request))
    if clean is not None:
        assert_clean(clean)
    return details


async def held_tiers(stub: pb_grpc.GpuAgentStub) -> dict[str, int]:
    """Model id -> the proto tier it is held in, from Status."""
    status = await stub.Status(pb.StatusRequest())
    return {m.model_id: m.tier for m in status.models}


async def watch_until(
    stub: pb_grpc.GpuAgentStub,
    until: Callable[[pb.Event], bool],
    *,
    model_ids: Sequence[str] = (),
    settle_s: float = 0.2,
) -> tuple[list[pb.Event], asyncio.Task[None]]:
    """Watch events into a list until one satisfies ``until``; the task ends then.

    Returns after ``settle_s`` so that the subscription is registered before the caller acts.
    """
    events: list[pb.Event] = []

    async def collect() -> None:
        async for event in stub.Watch(pb.WatchRequest(model_ids=list(model_ids))):
            events.append(event)
            if until(event):
                return

    task = asyncio.create_task(collect())
    await asyncio.sleep(settle_s)
    return events, task


def is_eviction(event: pb.Event) -> bool:
    return event.kind == pb.Event.KIND_EVICTED


# ------------------------------------------------------------------ attaching processes


class AttachChild:
    """A :mod:`tests.gpu_agent.attach_child` process: attaches, reports, waits for a poke."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    async def report(self) -> dict[str, object]:
        """The child's next JSON line (tier, per-tensor sums, devices)."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 60)
        if not line:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"child exited: {stderr}")
        data: dict[str, object] = json.loads(line)
        return data

    def poke(self) -> None:
        """Let the child read its tensors again (then release and exit)."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    async def exit_code(self, timeout_s: float = 30) -> int:
        return await asyncio.to_thread(self.process.wait, timeout_s)


@contextlib.contextmanager
def attach_child(
    repo_root: Path,
    running: Running,
    model_id: str,
    max_tier: Tier,
    *fallback: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[AttachChild]:
    """Start a process that attaches to ``model_id`` on ``running``; killed on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gpu_agent.attach_child", f"127.0.0.1:{running.port}",
         model_id, str(int(max_tier)), *map(str, fallback)],
        cwd=repo_root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(env) if env is not None else None,
    )  # fmt: skip
    try:
        yield AttachChild(process)
    finally:
        process.kill()
        process.wait(30)
