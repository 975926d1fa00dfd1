"""Real GPU agents bound to kwok nodes: one agent per node on 127.0.0.1, each on its own port with
its own cache and shared-memory directories, found by the daemon through its agent pod.

Owns: an agent's config under a test directory, starting an agent in this process (a real gRPC
server, the agent's own :func:`gpu_agent.server.serve`) or as a real ``prewarm agent`` process, and
the agent pod on a node whose ``prewarm.io/agent-address`` annotation says where that agent
listens (kwok runs the pod; nothing runs in it). Must not: fake the agent's protocol (tests that
need a misbehaving agent build that server themselves and say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from actuator.agents import AGENT_ADDRESS_ANNOTATION
from actuator.kube import PODS, KubeClient, Obj
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.nvml import Nvml
from gpu_agent.server import serve
from tests.harness.k8s import wait_for
from tests.harness.workloads import apply_pod, pod_body

AGENT_LABELS = {"app.kubernetes.io/name": "prewarm-gpu-agent"}
"""The labels ``actuator.agent.label_selector`` selects by default."""


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
    """``python -m prewarm agent`` with ``config`` (no CUDA), until the block ends (SIGTERM)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prewarm.yaml"
    config_file.write_text(yaml.safe_dump({"agent": config.model_dump(mode="json")}))
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    log = (workdir / "agent.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "prewarm", "--config", str(config_file), "agent",
         "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    log.close()
    try:
        deadline = time.monotonic() + 90
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "agent.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"prewarm agent did not start:\n{tail}")
            time.sleep(0.05)
        yield AgentProcess(process, int(port_file.read_text()))
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)


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
    body = pod_body(
        name or f"agent-{node}",
        namespace=namespace,
        image="prewarm:dev",
        container="agent",
        node=node,
        labels=dict(labels),
    )
    if address is not None:
        body["metadata"]["annotations"] = {AGENT_ADDRESS_ANNOTATION: address}
    path = apply_pod(kube, body)

    def running() -> Obj | None:
        pod = kube.get(path)
        status = (pod or {}).get("status") or {}
        return pod if status.get("phase") == "Running" and status.get("podIP") else None

    pod: Obj = wait_for(running, what=f"kwok to run the agent pod on {node}")
    return pod


def pod_path(pod: Obj) -> str:
    """The REST path of ``pod``."""
    return PODS.path(pod["metadata"]["namespace"], pod["metadata"]["name"])
