"""The demo's cluster: real GPU agent processes on 127.0.0.1, one per node, and no Kubernetes.

Owns: starting and stopping ``prewarm agent`` processes (:class:`AgentProcess`; with a bearer
token from a file only this user reads, :func:`new_agent_token`, or explicitly without auth on
127.0.0.1), and
:class:`LocalAgentsObserver`, the observer of a cluster whose nodes are those agents: what the
agents hold, their free memory and their measured loads come from their ``Status`` answers, read
as the daemon's own observer reads them (:mod:`actuator.agent_status`); replicas, images and GPUs,
which need Kubernetes, are reported as the daemon's latest plan left them (every replica floor
met, every image cached, each pool's GPUs fixed). Must not: claim a cluster action happened.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from actuator.agent_status import (
    AgentStatusReader,
    AgentView,
    LoadLedger,
    held_tier,
    node_state,
)
from actuator.config import AgentClientConfig
from common.errors import FailedPrecondition
from common.ids import ModelId, NodeName, PoolName
from planner.actions import ReplicaFloor, WarmPlan
from planner.catalog import Catalog
from planner.leadtime import StageObservation
from planner.planner import ModelState, NodeState, PoolState
from prewarm.cycle.interfaces import ClusterSnapshot

_AGENT_COMMAND = (sys.executable, "-m", "prewarm")


class AgentProcess:
    """A real ``prewarm agent`` process on 127.0.0.1 with its tiers under ``workdir``.

    ``host_max_bytes`` caps its host-memory tier (the tier it holds preloads in without a GPU).
    ``token_file``: callers must present the token in it; ``None``: no auth (it listens on
    127.0.0.1 only).
    """

    def __init__(
        self,
        workdir: Path,
        models_dir: Path,
        *,
        host_max_bytes: int,
        token_file: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.models_dir = models_dir
        self.host_max_bytes = host_max_bytes
        self.token_file = token_file
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """Where its gRPC API listens (after :meth:`wait`)."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process; :meth:`wait` for it to listen."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "agent": {
                "listen": "127.0.0.1:0",
                "metrics_port": 0,
                "cache_dir": str(self.workdir / "cache"),
                "shm_dir": str(self.workdir / "shm"),
                "allowed_file_roots": [str(self.models_dir)],
                "host_headroom_bytes": 0,
                "disk_headroom_bytes": 0,
                "host_max_bytes": self.host_max_bytes,
                "headroom_bytes": 512 * 1024**2,
                "auth": {"mode": "none"}
                if self.token_file is None
                else {"mode": "token", "token_file": str(self.token_file)},
            }
        }
        path = self.workdir / "agent.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        log = (self.workdir / "agent.log").open("w", encoding="utf-8")
        port_file = self.workdir / "agent.port"
        self.process = subprocess.Popen(
            [*_AGENT_COMMAND, "--config", str(path), "agent", "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self, timeout_s: float = 90.0) -> None:
        """Until the agent listens; FailedPrecondition (with its log's tail) if it does not."""
        port_file = self.workdir / "agent.port"
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if (
                self.process is None
                or self.process.poll() is not None
                or (time.monotonic() > deadline)
            ):
                self.stop()
                tail = (self.workdir / "agent.log").read_text(encoding="utf-8")[-1500:]
                raise FailedPrecondition(f"the GPU agent did not start:\n{tail}")
            time.sleep(0.1)
        self.port = int(port_file.read_text(encoding="utf-8").strip())

    def stop(self) -> None:
        """SIGTERM, then wait (the agent stops within its grace period)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass(frozen=True, slots=True)
class LocalNode:
    """A node of the demo's cluster: its pool and its agent's address."""

    name: NodeName
    pool: PoolName
    address: str


class LocalAgentsObserver:
    """Observes the demo's nodes through their agents (see the module docstring).

    ``latest_plan`` returns the daemon's latest plan (None before the first). ``memory_scale``
    multiplies the free memory the agents report, for agents that hold scaled-down copies of the
    models (the demo's: megabytes for gigabytes), so that the planner, which plans with the
    catalog's sizes, sees room for as many models as the agents have; the loads of scaled copies
    say nothing about a real model's load time, so with a scale other than 1 they are not reported
    as stage observations (the planner keeps the catalog's figures). Each pool has
    ``gpus_per_node`` free GPUs per node of ``gpu_memory_bytes``; a model's planned replicas run on
    the first node of its pool. :attr:`views` keeps the agents' latest answers (for the demo's
    timeline).
    """

    def __init__(
        self,
        nodes: Sequence[LocalNode],
        *,
        latest_plan: Callable[[], WarmPlan | None],
        catalog: Catalog,
        gpus_per_node: int = 8,
        gpu_memory_bytes: int = 80 * 10**9,
        config: AgentClientConfig | None = None,
        memory_scale: float = 1.0,
    ) -> None:
        self._nodes = list(nodes)
        self._latest_plan = latest_plan
        self._catalog = catalog
        self._gpus_per_node = gpus_per_node
        self._gpu_memory_bytes = gpu_memory_bytes
        self._reader = AgentStatusReader(config or AgentClientConfig())
        self._loads = LoadLedger()
        self._scale = memory_scale
        self.views: dict[NodeName, AgentView] = {}

    async def close(self) -> None:
        """Close the agent channels."""
        await self._reader.close()

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """The agents' holdings, memory and loads; replicas at the planned floors."""
        del now_s
        self.views = await self._reader.ask({n.name: n.address for n in self._nodes})
        floors = _floors(self._latest_plan())
        first_node: dict[PoolName, NodeName] = {}
        for node in self._nodes:
            first_node.setdefault(node.pool, node.name)
        observations: list[StageObservation] = []
        states: list[NodeState] = []
        for node in self._nodes:
            status = self.views[node.name].status
            seen = status is not None
            observed = (
                node_state(node.name, node.pool, status)
                if status is not None
                else NodeState(name=node.name, pool=node.pool, free_gpu_bytes=0)
            )
            if status is not None and self._scale == 1.0:
                observations += self._loads.new_loads(node.name, node.pool, status)
            running = frozenset(
                m
                for m, count in floors.items()
                if count > 0 and first_node.get(self._catalog.spec(m).node_pool) == node.name
            )
            states.append(
                NodeState(
                    name=node.name,
                    pool=node.pool,
                    free_gpu_bytes=int(observed.free_gpu_bytes * self._scale),
                    free_host_bytes=None
                    if observed.free_host_bytes is None
                    else int(observed.free_host_bytes * self._scale),
                    holdings=observed.holdings,
                    running=running,
                    agent_seen=seen,
                )
            )
        pools: dict[PoolName, PoolState] = {}
        for node in self._nodes:
            free = pools[node.pool].free_gpus if node.pool in pools else 0
            pools[node.pool] = PoolState(
                pool=node.pool,
                free_gpus=free + self._gpus_per_node,
                gpu_memory_bytes=self._gpu_memory_bytes,
            )
        model_states = {
            model: ModelState(
                model=model,
                ready_replicas=floors.get(model, 0),
                tier=held_tier(model, self._catalog.spec(model).node_pool, states),
                image_cached=True,
            )
            for model in models
        }
        return ClusterSnapshot(
            models=model_states,
            pools=pools,
            nodes=tuple(states),
            stage_observations=tuple(observations),
        )


def _floors(plan: WarmPlan | None) -> dict[ModelId, int]:
    floors: dict[ModelId, int] = {}
    if plan is not None:
        for floor in plan.of_type(ReplicaFloor):
            floors[floor.model] = max(floors.get(floor.model, 0), floor.min_replicas)
    return floors


def new_agent_token(path: Path) -> Path:
    """Write a fresh random bearer token for the agents to ``path`` (readable by this user
    only); ``path``, for their ``agent.auth.token_file`` and the callers' ``token_file``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secrets.token_urlsafe(32))
    return path


def start_agents(
    workdir: Path,
    models_dir: Path,
    host_max_bytes: Mapping[NodeName, int],
    *,
    token_file: Path | None = None,
) -> dict[NodeName, AgentProcess]:
    """One agent per node, started together (they import torch at start-up: seconds each);
    each expects the token in ``token_file`` (``None``: no auth, 127.0.0.1 only)."""
    agents = {
        node: AgentProcess(workdir / node, models_dir, host_max_bytes=cap, token_file=token_file)
        for node, cap in host_max_bytes.items()
    }
    try:
        for agent in agents.values():
            agent.start()
        for agent in agents.values():
            agent.wait()
    except BaseException:
        for agent in agents.values():
            agent.stop()
        raise
    return agents
