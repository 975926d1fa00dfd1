"""The loop closed through every real process: Prometheus -> daemon -> apiserver -> agents.

Real Prometheus with backfilled history (model ``spiky``: a daily spike; ``steady``: flat
traffic), a real kube-apiserver with kwok nodes in two pools, one real ``prewarm agent`` process
per node on 127.0.0.1 (own port, cache and shared-memory directories, found through its agent
pod's annotation), safetensors weights made by the test (160 MB for ``spiky``) served over
``file://`` to the agents and over ``http://127.0.0.1`` for the cold load, and the daemon in
active mode on the test clock. No GPU: the agents hold preloads in host memory.

Asserted: (a) before the spike, by more than the measured weights load time, ``spiky`` is held
by the agent of a node of its pool, and the replica floor is applied; the daemon's Preloads name
real node names; (b) a serving process on that node gets the weights through the agent in under
a tenth of the time of a cold load from the source (both times printed); (d) an agent SIGKILLed
mid-run leaves the other nodes observed and planned for, and once restarted it is observed again
and its holdings repaired.

(c) idle, left in the host memory of spiky's node with a low value, is evicted from that node
when spiky needs the memory (the node's agent holds 200 MB: both do not fit).

(e, in part) the daemon's metrics count the preloads by result; the agents' warm-hit counter
(``prewarm_agent_attaches_total``) and the dashboards' query of it are checked against a real
Prometheus in ``tests/dashboards``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from kubernetes import client as k8s_client

from actuator.agents import AgentActuator, PodAddressResolver
from actuator.apply import Actuator
from actuator.config import ActuatorConfig, AgentClientConfig, RetryConfig
from actuator.kube import DEPLOYMENTS, KubeClient
from actuator.observer import KubeClusterObserver
from common.ids import ModelId
from common.tiers import Tier
from forecaster.config import PrometheusSourceConfig
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from forecaster.types import SeriesBatch
from planner.actions import Evict, Preload
from planner.catalog import parse_catalog
from planner.config import PlannerConfig
from planner.placement import NodeState
from prewarm.daemon.app import ThreadedSource, weight_sources
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from protos.tiers import tier_from_proto
from tests.gpu_agent.httpserver import serve_files
from tests.harness.agent import sha256, write_model
from tests.harness.k8s import make_kwok_nodes
from tests.harness.node_agents import agent_process, apply_agent_pod, node_agent_config
from tests.harness.prometheus import RunningPrometheus, prometheus_with_history
from tests.harness.workloads import deployment_body

pytestmark = [
    pytest.mark.acceptance_loop,
    pytest.mark.k8s,
    pytest.mark.prometheus,
    pytest.mark.slow,
]

REPO = Path(__file__).resolve().parents[2]
STEP = 60.0
TICK = 15.0
"""The daemon's default tick."""
DAY = 86400.0
SPIKY, STEADY, IDLE = ModelId("spiky"), ModelId("steady"), ModelId("idle")
COMPILE_S = {SPIKY: 120}
"""spiky's compile time: its lead time, and so how early its replica (and weights) are planned."""
HOST_CAP = 200_000_000
"""The host tier of pool A's node holds 200 MB: spiky (160 MB) and idle (60 MB) do not both fit."""
SPIKE_IN_S = 40 * 60.0
"""Today's spike starts this long after the test starts (at the same time every day)."""


def _history(start_s: float, end_s: float, spike_s: float) -> SeriesBatch:
    """Per-minute counts from ``start_s`` to ``end_s``: ``spiky`` 10/s for an hour from the time
    of day of ``spike_s``, every day, and nothing else; ``steady`` about one request a second."""
    times = np.arange(start_s, end_s, STEP)
    rng = np.random.default_rng(11)
    spike = ((times - spike_s) % DAY) < 3600.0
    spiky = np.where(spike, rng.poisson(600.0, times.size), 0).astype(np.float64)
    steady = rng.poisson(60.0, times.size).astype(np.float64)
    return SeriesBatch(
        models=(SPIKY, STEADY), start_s=start_s, step_s=STEP, counts=np.vstack([spiky, steady])
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[RunningPrometheus, float]]:
    # History up to the last whole minute: the daemon's clock starts now, because the agents
    # check Preload deadlines against their own (wall) clocks. Today's spike is still ahead.
    now_s = math.floor(time.time() / STEP) * STEP
    spike_s = now_s + SPIKE_IN_S
    history = _history(now_s - 4 * DAY, now_s, spike_s)
    with prometheus_with_history(history, tmp_path / "prom") as server:
        yield server, now_s


def _catalog(namespace: str, pools: dict[ModelId, str], sources: dict[ModelId, Path]) -> str:
    entries = []
    for model, pool in pools.items():
        path = sources[model]
        entries.append(
            f"""  {model}:
    weights_gb: {path.stat().st_size / 1e9:.6f}
    image: registry.example.com/serving/{model}:v1
    image_gb: 5
    replica_rps: 5
    compile_s: {COMPILE_S.get(model, 10)}
    node_pool: {pool}
    workload: {{namespace: {namespace}, name: {model}}}
    weights: [{{uri: "file://{path}", sha256: "{sha256(path)}"}}]
"""
        )
    return "models:\n" + "".join(entries)


async def test_preloads_reach_the_agents_of_real_nodes_before_the_spike_and_survive_an_agent_crash(
    prometheus: tuple[RunningPrometheus, float],
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="actuator.agents")
    server, start_s = prometheus
    pool_a, pool_b = f"{k8s_namespace}-a", f"{k8s_namespace}-b"
    nodes_a = make_kwok_nodes(k8s_api, pool=pool_a, count=1, gpus=8)
    nodes_b = make_kwok_nodes(k8s_api, pool=pool_b, count=1, gpus=8)
    sources_dir = tmp_path / "sources"
    sources_dir.mkdir()
    sources = {}
    sizes = ((SPIKY, 40_000_000), (STEADY, 250_000), (IDLE, 15_000_000))  # 160, 1 and 60 MB
    for seed, (model, numel) in enumerate(sizes):
        sources[model] = sources_dir / f"{model}.safetensors"
        write_model(sources[model], seed=seed, numel=numel)
    retry = RetryConfig(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.3)
    config = ActuatorConfig(
        namespace=k8s_namespace,
        retry=retry,
        agent=AgentClientConfig(status_timeout_s=1.0, timeout_s=20.0),
    )
    kube = KubeClient(k8s_api, retry)
    apps = k8s_client.AppsV1Api(k8s_api)
    for model in (SPIKY, STEADY, IDLE):
        apps.create_namespaced_deployment(
            k8s_namespace, deployment_body(str(model), replicas=0, image=f"serving/{model}:v1")
        )
    pools = {SPIKY: pool_a, STEADY: pool_b, IDLE: pool_a}
    catalog = parse_catalog(_catalog(k8s_namespace, pools, sources))
    configs = {
        node: node_agent_config(
            tmp_path / "agents" / node, sources=sources_dir, host_max_bytes=HOST_CAP
        )
        for node in (*nodes_a, *nodes_b)
    }
    with contextlib.ExitStack() as stack:
        agents = {
            node: stack.enter_context(agent_process(cfg, tmp_path / "agents" / node / "run"))
            for node, cfg in configs.items()
        }
        for node, agent in agents.items():
            apply_agent_pod(
                kube, namespace=k8s_namespace, node=node, address=f"127.0.0.1:{agent.port}"
            )
        # An earlier plan (or a manual request since expired) left idle, which has no traffic at
        # all, in the host memory of pool A's node, with a low value.
        (node_a,) = nodes_a
        _preload(agents[node_a].port, IDLE, sources[IDLE], value=0.01)
        actuator = Actuator(
            kube,
            config,
            agents=AgentActuator(
                config,
                PodAddressResolver(kube, config),
                weights_of=lambda model: weight_sources(catalog, model),
            ),
        )
        # The agents check Preload deadlines against the wall clock: the test clock starts there.
        clock = [max(start_s, time.time())]
        daemon = Daemon(
            DaemonConfig(mode="active", tick_s=TICK),
            source=ThreadedSource(
                PrometheusSource(
                    PrometheusSourceConfig(url=server.url, step_s=int(STEP)),
                    history_window_s=4 * DAY,
                )
            ),
            engine=AutoForecaster(STEP, history_window_s=4 * DAY),
            observer=KubeClusterObserver(kube, config=config, catalog=catalog),
            applier=actuator,
            catalog=catalog,
            planner_config=PlannerConfig(),
            horizon_s=1800,
            planning_quantile=0.9,
            step_s=STEP,
            clock=lambda: clock[0],
        )
        spike_s = start_s + SPIKE_IN_S
        held_at: float | None = None
        floor_at: float | None = None
        preload_nodes: set[str] = set()

        async def tick() -> None:
            report = await daemon.tick()
            assert report.plan is not None
            errors = [o for o in report.applied if o.result == "error"]
            assert not errors, errors
            preload_nodes.update(str(a.node) for a in report.plan.of_type(Preload))

        evictions: set[tuple[str, str, Tier]] = set()
        while clock[0] < spike_s:
            await tick()
            plan = daemon.plan()
            assert plan is not None
            evictions |= {(str(e.model), str(e.node), e.tier) for e in plan.of_type(Evict)}
            holder = _holder(daemon, SPIKY, pool_a)
            if holder is not None and held_at is None:
                held_at = clock[0]
            if floor_at is None and _replicas(kube, k8s_namespace, SPIKY) > 0:
                floor_at = clock[0]
            # The daemon's own tick near the spike, coarser before it to keep the test short.
            near = spike_s - 1200 <= clock[0]
            clock[0] += TICK if near else 5 * STEP

        # (a) held on a node of its pool before the spike, by more than the measured load time.
        assert held_at is not None, "spiky was never held by an agent before its spike"
        holder = _holder(daemon, SPIKY, pool_a)
        assert holder is not None
        load_s = _load_seconds(agents[holder].port, SPIKY)
        print(
            f"\nspiky held {spike_s - held_at:.0f} s before the spike; its load took {load_s:.3f} s"
        )
        assert spike_s - held_at > load_s
        assert floor_at is not None
        assert floor_at < spike_s
        assert preload_nodes
        assert preload_nodes <= set(nodes_a) | set(nodes_b)
        assert not preload_nodes & {pool_a, pool_b}  # a node is never a pool's name
        logged = [r.getMessage() for r in caplog.records if r.name == "actuator.agents"]
        assert any(f"agent on {node_a}: Preload spiky" in line for line in logged), logged
        assert any(f"agent on {node_a}: Evict idle host" in line for line in logged), logged

        # (c) spiky, worth more, needed the host memory of the node that held idle: idle was
        # evicted there, by the plan and on the agent.
        assert (str(IDLE), node_a, Tier.HOST) in evictions
        assert _held(agents[node_a].port).get(str(IDLE), Tier.REMOTE) < Tier.HOST
        assert _held(agents[node_a].port)[str(SPIKY)] == Tier.HOST

        # (e) the daemon's /metrics count the preloads by result.
        preloads_ok = daemon.metrics.registry.get_sample_value(
            "prewarm_actions_total", {"type": "Preload", "result": "ok"}
        )
        assert preloads_ok is not None
        assert preloads_ok >= 1

        # (b) a serving process on that node takes the weights from the agent (host tier) in under
        # a tenth of the time of a cold load from the source (download, verify, load).
        with serve_files(sources_dir) as (base_url, _):
            cold = _serve("cold", f"{base_url}{sources[SPIKY].name}", sha256(sources[SPIKY]))
        warm = _serve("attach", f"127.0.0.1:{agents[holder].port}", str(SPIKY))
        ratio = warm["seconds"] / cold["seconds"]
        print(
            f"serving load of spiky: {warm['seconds']:.3f} s from the agent ({warm['tier']} "
            f"tier), {cold['seconds']:.3f} s cold from the source: {ratio:.3f}x"
        )
        assert warm["tier"] == "host"
        assert warm["checksum"] == cold["checksum"]
        assert ratio < 0.1

        # (d) one agent SIGKILLed: the other nodes' ticks go on; restarted, it is seen again.
        victim = _holder(daemon, SPIKY, pool_a)
        assert victim is not None
        agents[victim].process.send_signal(signal.SIGKILL)
        agents[victim].process.wait(30)
        clock[0] += TICK
        await tick()
        snapshot_nodes = _nodes(daemon)
        assert snapshot_nodes[victim].agent_seen is False
        assert all(snapshot_nodes[n].agent_seen for n in (*nodes_a, *nodes_b) if n != victim)
        restarted = stack.enter_context(
            agent_process(configs[victim], tmp_path / "agents" / victim / "run-2")
        )
        apply_agent_pod(
            kube, namespace=k8s_namespace, node=victim, address=f"127.0.0.1:{restarted.port}"
        )
        for _ in range(5):
            clock[0] += TICK
            await tick()
            if _holder(daemon, SPIKY, pool_a) is not None:
                break
        assert _nodes(daemon)[victim].agent_seen
        assert _holder(daemon, SPIKY, pool_a) is not None, "holdings were not repaired"


def _serve(*args: str) -> dict[str, Any]:
    """Run a serving process's weight load (tests/acceptance/serving_child.py); its report."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.acceptance.serving_child", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _nodes(daemon: Daemon) -> dict[str, NodeState]:
    observed = daemon.observed()
    assert observed is not None
    return {str(node.name): node for node in observed.nodes}


def _holder(daemon: Daemon, model: ModelId, pool: str) -> str | None:
    observed = daemon.observed()
    if observed is None:
        return None
    for node in observed.nodes:
        if node.pool == pool and node.holdings.get(model, Tier.REMOTE) >= Tier.HOST:
            return str(node.name)
    return None


def _preload(port: int, model: ModelId, path: Path, *, value: float) -> None:
    """Have the agent at ``port`` hold ``model`` in host memory (value ``value``)."""
    request = pb.PreloadRequest(
        model_id=str(model),
        weights=[pb.Source(uri=f"file://{path}", sha256=sha256(path))],
        target_tier=pb.TIER_HOST,
        predicted_value=value,
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        *_, done = pb_grpc.GpuAgentStub(channel).Preload(request, timeout=60)
    assert done.stage == pb.PreloadProgress.STAGE_DONE, done.message


def _held(port: int) -> dict[str, Tier]:
    """What the agent at ``port`` holds, by model, in its fastest tier."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = pb_grpc.GpuAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
    held: dict[str, Tier] = {}
    for holding in status.models:
        tier = tier_from_proto(holding.tier)
        if tier is not None:
            held[holding.model_id] = max(tier, held.get(holding.model_id, Tier.REMOTE))
    return held


def _load_seconds(port: int, model: ModelId) -> float:
    """The load time the agent measured for ``model`` (its Status)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = pb_grpc.GpuAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
    (holding,) = [h for h in status.models if h.model_id == model]
    assert holding.load_duration_s > 0
    return float(holding.load_duration_s)


def _replicas(kube: KubeClient, namespace: str, model: ModelId) -> int:
    deployment = kube.get(DEPLOYMENTS.path(namespace, str(model)))
    assert deployment is not None
    return int(deployment["spec"].get("replicas") or 0)
