"""What ``prewarm up`` prints: where everything is, then what the daemon does as it lands.

Owns: the summary printed once the stack runs (addresses, files, the commands to try) and the
watcher that reports each model an agent newly holds (or dropped) and each serving Deployment whose
replicas changed, read from the daemon's latest observation and from the apiserver, and that stops
the stack at the end of ``--duration``. Must not: act on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from actuator.config import RetryConfig
from actuator.kube import KubeClient
from common.durations import format_duration
from common.ids import ModelId, NodeName
from common.tiers import Tier
from prewarm.daemon.loop import Daemon
from prewarm.up.fleet import SERVING_NAMESPACE, replicas

if TYPE_CHECKING:
    from prewarm.up.stack import Stack, UpConfig


DASHBOARD_REFRESH_S = 30.0
"""Wall seconds between two drawings of the dashboards while the stack runs."""


def summary(running: Stack, config: UpConfig) -> list[str]:
    """The lines printed once the stack runs: where everything is and what to try."""
    info = running.describe()
    state = running.state_dir
    server = info["control_server"]
    example = sorted(running.fleet.workloads)[0]
    nodes = ", ".join(
        f"{n} (pool {p}, agent {running.agents[n].address})" for n, p in running.nodes.items()
    )
    until = (
        f"for {format_duration(config.duration_s)} of trace time "
        f"({format_duration(running.clock.wall_seconds(config.duration_s))} wall)"
        if config.duration_s is not None
        else "until Ctrl-C"
    )
    return [
        f"prewarm up is running {until}; state, settings and logs in {state}",
        f"  Prometheus      {running.prometheus.url}  (history backfilled; live traffic pushed "
        "every second and the daemon's metrics every 2 s, stamped with the trace clock)",
        f"  kube-apiserver  {running.plane.url}  (KUBECONFIG={running.kubeconfig})",
        f"  nodes           {nodes}",
        f"  workloads       {len(running.fleet.workloads)} Deployments labelled prewarm.io/model "
        f"in namespace {SERVING_NAMESPACE}, at 0 replicas",
        f"  daemon          active, tick {config.tick_s:g} s of trace time; control API {server} "
        f"(token in {running.control_token}); {info['metrics_url']}",
        f"  daemon log      {running.daemon_log}; agents' logs in {state / 'agents'}/*/agent.log; "
        f"cluster's in {state / 'cluster'}",
        f"  dashboards      {state / 'dashboards'}/index.html: Grafana's panels drawn from "
        f"Prometheus on the trace clock, every {DASHBOARD_REFRESH_S:g} s and when the stack stops",
        "try, in another shell:",
        f"  export PREWARM_SERVER={server} PREWARM_TOKEN=$(cat {running.control_token})",
        "  prewarm plan",
        f"  prewarm explain {example}",
        f"  prewarm warm {example} --replicas 2 --for 30m --reason trying",
        f"  KUBECONFIG={running.kubeconfig} kubectl get deployments -n {SERVING_NAMESPACE}",
        "Ctrl-C stops everything.",
    ]


async def watch(
    daemon: Daemon,
    running: Stack,
    stop: asyncio.Event,
    out: Callable[[str], None],
    *,
    end_s: float | None,
) -> None:
    """Say what the daemon did, as it shows in the agents and the cluster: each model an agent
    newly holds (or dropped), each Deployment whose replicas changed; stop at ``end_s``."""
    kube = KubeClient(running.plane.admin_client(), RetryConfig(attempts=2, initial_backoff_s=0.1))
    held: set[tuple[ModelId, NodeName, Tier]] = set()
    floors: dict[ModelId, int] = {}
    ticked = False
    while not stop.is_set():
        now = running.clock()
        stamp = time.strftime("%a %H:%M", time.gmtime(running.replay.trace_time(now)))
        snapshot = daemon.observed()
        if snapshot is not None:
            current = {
                (model, node.name, tier)
                for node in snapshot.nodes
                for model, tier in node.holdings.items()
                if tier >= Tier.HOST
            }
            for model, node, tier in sorted(current - held):
                out(
                    f"[{stamp}] preload: {model} held in {tier.label} memory by the agent on {node}"
                )
            for model, node, tier in sorted(held - current):
                out(f"[{stamp}] evicted: {model} from {tier.label} memory on {node}")
            held = current
        if not ticked and daemon.published() is not None:
            ticked = True
            out(f"[{stamp}] first tick done: {len(daemon.forecasts())} models forecast")
        now_replicas = await asyncio.to_thread(
            replicas, kube, running.fleet, namespace=SERVING_NAMESPACE
        )
        for model, count in sorted(now_replicas.items()):
            before = floors.get(model, 0)
            if count != before:
                name = running.fleet.workloads[model]
                kind = "floor" if count > before else "floor lowered" if count else "floor restored"
                out(
                    f"[{stamp}] {kind}: deployment {SERVING_NAMESPACE}/{name} ({model}) "
                    f"replicas {before} -> {count}"
                )
        floors = now_replicas
        if end_s is not None and now >= end_s:
            out(f"[{stamp}] replayed {format_duration(end_s - running.replay.start_s)}; stopping")
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
