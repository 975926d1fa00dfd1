"""Real GPU agents bound to kwok nodes: one agent per node on 127.0.0.1, each on its own port with
its own cache and shared-memory directories, found by the daemon through its agent pod.

Owns: an agent's config under a test directory, starting an agent in this process (a real gRPC
server, the agent's own :func:`gpu_agent.server.serve`) or as a real ``prewarm agent`` process
(:mod:`prewarm.up.agents`, which ``prewarm up`` starts its agents with), and the agent pod on a
node whose ``prewarm.io/agent-address`` annotation says where that agent listens (kwok runs the
pod; nothing runs in it). Must not: fake the agent's protocol (tests that
need a misbehaving agent build that server themselves and say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actuator.kube import PODS, KubeClient, Obj
from common.errors import FailedPrecondition
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.nvml import Nvml
from gpu_agent.server import serve
from prewarm.up import agents as up_agents
from prewarm.up.agents import AGENT_LABELS, start_agent

__all__ = ["AGENT_LABELS"]


def node_agent_config(root: Path, *, sources: Path, **overrides: Any) -> AgentConfig:
    """An agent's settings with its tiers under ``root``, file sources under ``sources``, any free
    port on 127.0.0.1, no metrics server and no auth (``auth=`` in ``overrides`` sets one)."""
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "cache_dir": str(root / "cache"),
        "shm_dir": str(root / "shm"),
        "headroom_bytes": 1024**3,
        "host_headroom_bytes": 0,
        "disk_headroom_bytes": 0,
        "allowed_schemes": ["file"],
        "allowed_file_roots": [str(sources)],
        "chunk_bytes": 1024**2,
        "copy_workers": 2,
        "shutdown_grace_s": 0.5,
        "metrics_port": None,
        # 127.0.0.1 only; a test that checks the token passes auth= itself.
        "auth": {"mode": "none"},
        **overrides,
    }
    return AgentConfig.model_validate(settings)


@dataclass
class ServedAgent:
    """An agent serving in this process: its port, and how to stop it."""

    agent: Agent
    port: int
    _stop: asyncio.Event
    _task: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop serving (idempotent); the port refuses connections afterwards."""
        self._stop.set()
        await asyncio.wait_for(self._task, 30)


@contextlib.asynccontextmanager
async def agent_server(
    config: AgentConfig, *, node: str, nvml: Nvml | None = None
) -> AsyncIterator[ServedAgent]:
    """A real agent server in this process that reports ``node`` as its node."""
    agent = Agent(config, nvml=nvml, node_name=node)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(config, agent=agent, stop=stop, on_ready=ready.set_result, handle_signals=False)
    )
    port = await asyncio.wait_for(ready, 30)
    served = ServedAgent(agent, port, stop, task)
    try:
        yield served
    finally:
        await served.stop()


@dataclass
class AgentProcess:
    """A real ``prewarm agent`` process and the port it bound."""

    process: subprocess.Popen[bytes]
    port: int


@contextlib.contextmanager
def agent_process(config: AgentConfig, workdir: Path) -> Iterator[AgentProcess]:
    """``python -m prewarm agent`` with ``config`` (no CUDA), until the block ends (SIGTERM);
    started by :func:`prewarm.up.agents.start_agent`."""
    try:
        started = start_agent(config, workdir)
    except FailedPrecondition as error:
        raise AssertionError(str(error)) from error
    assert started.child.popen is not None
    try:
        yield AgentProcess(started.child.popen, started.port)
    finally:
        started.stop()


def apply_agent_pod(
    kube: KubeClient,
    *,
    namespace: str,
    node: str,
    address: str | None,
    name: str | None = None,
    labels: Mapping[str, str] = AGENT_LABELS,
) -> Obj:
    """An agent pod bound to ``node`` whose annotation points at ``address`` (None: no
    annotation); returns it once kwok runs it (Running, with a pod IP)."""
    try:
        return up_agents.apply_agent_pod(
            kube,
            namespace=namespace,
            node=node,
            address=address,
            name=name,
            labels=labels,
            field_manager="test",
        )
    except FailedPrecondition as error:
        pytest.fail(str(error), pytrace=False)


def pod_path(pod: Obj) -> str:
    """The REST path of ``pod``."""
    return PODS.path(pod["metadata"]["namespace"], pod["metadata"]["name"])
