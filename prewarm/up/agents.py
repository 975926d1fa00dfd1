"""Real GPU agents bound to kwok nodes: one ``prewarm agent`` process per node on 127.0.0.1, each
on its own port with its own cache and shared-memory directories, found by the daemon through its
agent pod.

Owns: starting an agent as a real ``prewarm agent`` process from an :class:`AgentConfig` (no
CUDA: it holds preloads in host memory) and waiting until it listens, and the agent pod on a node
whose ``prewarm.io/agent-address`` annotation says where that agent listens (kwok runs the pod;
nothing runs in it). ``prewarm up`` and the test harness (``tests/harness/node_agents.py``) both
start their agents here. Must not: fake the agent's protocol.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from actuator.agents import AGENT_ADDRESS_ANNOTATION
from actuator.kube import PODS, KubeClient, Obj
from common.errors import FailedPrecondition
from gpu_agent.config import AgentConfig
from prewarm.up.processes import ChildProcess

AGENT_LABELS = {"app.kubernetes.io/name": "prewarm-gpu-agent"}
"""The labels ``actuator.agent.label_selector`` selects by default."""


@dataclass
class AgentProcess:
    """A started ``prewarm agent`` process and the port it bound."""

    child: ChildProcess
    port: int

    @property
    def address(self) -> str:
        """Where its gRPC API listens."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM; it stops within its grace period (SIGKILL after 30 s)."""
        self.child.stop(timeout_s=30)


def start_agent(config: AgentConfig, workdir: Path, *, timeout_s: float = 90) -> AgentProcess:
    """``python -m prewarm agent`` with ``config`` and no CUDA device, its config and log under
    ``workdir``; returns once it listens. :class:`FailedPrecondition` with its log otherwise."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prewarm.yaml"
    config_file.write_text(yaml.safe_dump({"agent": config.model_dump(mode="json")}))
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    child = ChildProcess(
        "prewarm agent",
        [sys.executable, "-m", "prewarm", "--config", str(config_file), "agent",
         "--port-file", str(port_file)],
        workdir / "agent.log",
        # No GPU: the agent holds preloads in host memory (and says so at start).
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    child.start()
    deadline = time.monotonic() + timeout_s
    while not port_file.exists() or not port_file.read_text().strip():
        if not child.alive() or time.monotonic() > deadline:
            tail = child.tail(60)
            child.stop()
            raise FailedPrecondition(f"prewarm agent did not start:\n{tail}")
        time.sleep(0.05)
    return AgentProcess(child, int(port_file.read_text()))


def agent_pod_body(
    *,
    namespace: str,
    node: str,
    address: str | None,
    name: str | None = None,
    labels: Mapping[str, str] = AGENT_LABELS,
) -> Obj:
    """An agent pod bound to ``node`` whose annotation points at ``address`` (None: none)."""
    metadata: Obj = {
        "name": name or f"agent-{node}",
        "namespace": namespace,
        "labels": dict(labels),
    }
    if address is not None:
        metadata["annotations"] = {AGENT_ADDRESS_ANNOTATION: address}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "prewarm:dev"}]},
    }


def apply_agent_pod(
    kube: KubeClient,
    *,
    namespace: str,
    node: str,
    address: str | None,
    name: str | None = None,
    labels: Mapping[str, str] = AGENT_LABELS,
    field_manager: str = "prewarm-up",
    timeout_s: float = 30,
) -> Obj:
    """Apply the agent pod of ``node`` (see :func:`agent_pod_body`); returns it once kwok runs
    it (Running, with a pod IP). :class:`FailedPrecondition` after ``timeout_s``."""
    body = agent_pod_body(namespace=namespace, node=node, address=address, name=name, labels=labels)
    path = PODS.path(namespace, body["metadata"]["name"])
    kube.apply(path, body, field_manager=field_manager, dry_run=False)
    deadline = time.monotonic() + timeout_s
    while True:
        pod = kube.get(path)
        status = (pod or {}).get("status") or {}
        if pod is not None and status.get("phase") == "Running" and status.get("podIP"):
            return pod
        if time.monotonic() > deadline:
            raise FailedPrecondition(
                f"kwok did not run the agent pod on {node} in {timeout_s:.0f} s"
            )
        time.sleep(0.2)
