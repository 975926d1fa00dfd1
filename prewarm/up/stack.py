"""``prewarm up``: the whole local stack, started, watched and stopped in order.

Owns: choosing where in the trace the replay starts, the daemon's settings, and starting the parts
in order: Prometheus with the trace's history, etcd + kube-apiserver + kwok with GPU nodes, one
``prewarm agent`` per node, the serving Deployments, then the daemon itself
(:func:`prewarm.daemon.app.build_runtime` and :func:`~prewarm.daemon.app.serve`, as ``prewarm run``
does, in active mode, its control API on 127.0.0.1 behind a generated token) and the live traffic
pushed on the stack's clock; then stopping it all on Ctrl-C, SIGTERM or the end of ``--duration``:
the daemon first, then every child process, each waited for. What it prints is
:mod:`prewarm.up.watch`; its state directory, :mod:`prewarm.up.state`.

Must not: leave a process or a bound port behind, touch anything outside the state directory and
127.0.0.1, or decide anything (the daemon does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from actuator.config import RetryConfig
from actuator.kube import KubeClient
from common.errors import InvalidInput, PrewarmError
from common.ids import NodeName, PoolName
from forecaster.sources.trace import read_trace
from forecaster.types import SeriesBatch
from gpu_agent.config import AgentConfig
from prewarm.daemon.app import build_runtime, install_signal_handlers, serve
from prewarm.data import resolve_trace
from prewarm.demo.spikes import choose_window
from prewarm.logging import configure_logging
from prewarm.settings import load_settings
from prewarm.up import cluster
from prewarm.up.agents import AgentProcess, apply_agent_pod, start_agent
from prewarm.up.clock import StackClock
from prewarm.up.fleet import SERVING_NAMESPACE, Fleet, apply_workloads, build_fleet
from prewarm.up.processes import free_port, port_open
from prewarm.up.prometheus import METRIC, PrometheusServer, backfill, start_prometheus
from prewarm.up.prometheus import write_openmetrics as write_history
from prewarm.up.relay import daemon_samples
from prewarm.up.remote_write import Pusher
from prewarm.up.state import state_directory, write_secret
from prewarm.up.testenv import stack_binaries
from prewarm.up.traffic import Replay, plan_replay, traffic_samples
from prewarm.up.watch import DASHBOARD_REFRESH_S, summary, watch

DEFAULT_TRACE = "builtin:servegen-spiky-14d"
DEFAULT_DIR = Path.home() / ".cache" / "prewarm-up"
PREWARM_NAMESPACE = "prewarm"
"""The daemon's own objects: the control ConfigMap, the agent pods, placeholders."""
SETUP_MARGIN_S = 120.0
"""Time the start-up may take: the replay starts on the first whole step after it."""


@dataclass(frozen=True)
class UpConfig:
    """What ``prewarm up`` runs. Times are on the stack's clock (trace time) unless named wall."""

    trace: str = DEFAULT_TRACE
    state_dir: Path = DEFAULT_DIR
    speed: float = 10.0
    """Stack seconds per wall second (1: real time)."""
    duration_s: float | None = None
    """Replay this much trace time, then stop (None: until Ctrl-C or SIGTERM)."""
    tick_s: float = 60.0
    """The daemon's tick, on the stack's clock."""
    lead_s: float = 1800.0
    """The replay starts this long before the onset of the trace's largest last-day spike."""
    nodes_per_pool: int = 1
    gpus_per_node: int = 8
    host_share: float = 0.6
    """Each node's host tier holds this share of its pool's weights (so evictions happen)."""
    bytes_per_gb: int = 128 * 1024
    """Generated weights: this many bytes per GB of the model's default size class."""

    def __post_init__(self) -> None:
        if self.speed < 1:
            raise InvalidInput(f"--speed must be at least 1, got {self.speed:g}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InvalidInput("--duration must be a positive duration, e.g. 10m")
        if not 1 <= self.nodes_per_pool <= 8:
            raise InvalidInput(f"--nodes-per-pool must be 1 to 8, got {self.nodes_per_pool}")


@dataclass
class Stack:
    """What is running: addresses, files and processes (written to ``stack.json``)."""

    state_dir: Path
    replay: Replay
    clock: StackClock
    fleet: Fleet
    prometheus: PrometheusServer
    plane: cluster.ControlPlane
    agents: dict[NodeName, AgentProcess]
    control_port: int
    probes_port: int
    settings_file: Path
    control_token: Path
    nodes: dict[NodeName, str] = field(default_factory=dict)
    """Each node's pool."""

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def daemon_log(self) -> Path:
        return self.state_dir / "logs" / "daemon.log"

    def ports(self) -> dict[str, int]:
        """Every loopback port the stack listens on, by what listens."""
        ports = {
            "prometheus": self.prometheus.port,
            "kube-apiserver": self.plane.apiserver_port,
            "control-api": self.control_port,
            "daemon-http": self.probes_port,
        }
        for index, port in enumerate(self.plane.other_ports):
            ports[f"cluster-{index}"] = port
        for node, agent in self.agents.items():
            ports[f"agent-{node}"] = agent.port
        return ports

    def pids(self) -> dict[str, int]:
        """Every child process's id, by name."""
        pids: dict[str, int] = {}
        for child in (*self.plane.children(), self.prometheus.process):
            if child.pid is not None:
                pids[child.name] = child.pid
        for node, agent in self.agents.items():
            if agent.child.pid is not None:
                pids[f"agent-{node}"] = agent.child.pid
        return pids

    def describe(self) -> dict[str, Any]:
        """The stack as data (``stack.json``): for scripts and tests."""
        return {
            "pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "prometheus_url": self.prometheus.url,
            "apiserver_url": self.plane.url,
            "kubeconfig": str(self.kubeconfig),
            "control_server": f"127.0.0.1:{self.control_port}",
            "control_token_file": str(self.control_token),
            "agent_token_file": str(self.state_dir / "agent-token"),
            "metrics_url": f"http://127.0.0.1:{self.probes_port}/metrics",
            "settings": str(self.settings_file),
            "catalog": str(self.fleet.catalog_path),
            "serving_namespace": SERVING_NAMESPACE,
            "workloads": {str(m): n for m, n in self.fleet.workloads.items()},
            "nodes": {str(n): p for n, p in self.nodes.items()},
            "agents": {str(n): a.address for n, a in self.agents.items()},
            "ports": self.ports(),
            "pids": self.pids(),
            "speed": self.clock.speed,
            "replay_start_s": self.replay.start_s,
            "daemon_log": str(self.daemon_log),
        }


# -- the trace ----------------------------------------------------------------------------------


def first_live_step(trace: SeriesBatch, *, lead_s: float) -> int:
    """Where the replay starts: ``lead_s`` before the onset of the largest spike of the trace's
    last day (the demo's choice), so the daemon has days of history and a spike ahead; for a
    trace without one (shorter than two days, or flat), three quarters of the way in."""
    lead = max(1, math.ceil(lead_s / trace.step_s))
    try:
        onset = choose_window(trace, count=1).spikes[0].onset
    except InvalidInput:
        onset = trace.steps * 3 // 4 + lead
    return max(1, min(trace.steps - 1, onset - lead))


# -- starting the parts -------------------------------------------------------------------------


def _start_prometheus(binaries: dict[str, Path], replay: Replay, workdir: Path) -> PrometheusServer:
    """Backfill the replay's history and start Prometheus, receiving live samples by remote
    write (see :mod:`prewarm.up.remote_write` for why not by scraping)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "history.om.txt"
    # Two samples per step, so rate() over one step finds at least two whether the range
    # selector includes its left end (Prometheus 2) or not (3).
    write_history(replay.history, source, samples_per_step=2)
    backfill(binaries["PREWARM_PROMTOOL_BIN"], source, workdir / "tsdb", max_block_duration="24h")
    source.unlink()
    return start_prometheus(
        binaries["PREWARM_PROMETHEUS_BIN"],
        workdir,
        extra_args=["--web.enable-remote-write-receiver"],
    )


def _agent_config(root: Path, *, models_dir: Path, host_max_bytes: int, token: Path) -> AgentConfig:
    """An agent on 127.0.0.1 (any free port) with its tiers under ``root``, ``file://`` sources
    under ``models_dir`` only, its host tier capped, and the generated bearer token."""
    return AgentConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "cache_dir": str(root / "cache"),
            "shm_dir": str(root / "shm"),
            "headroom_bytes": 512 * 1024**2,
            "host_headroom_bytes": 0,
            "disk_headroom_bytes": 0,
            "host_max_bytes": host_max_bytes,
            "allowed_schemes": ["file"],
            "allowed_file_roots": [str(models_dir)],
            "metrics_port": None,
            "shutdown_grace_s": 2.0,
            "auth": {"mode": "token", "token_file": str(token)},
        }
    )


def _gather(stack: contextlib.ExitStack, futures: list[Future[Any]]) -> list[Any]:
    """Every future's result, each registered on ``stack`` to be stopped; waits for all of them,
    also through Ctrl-C or SIGTERM (a part still starting is stopped once it has started), then
    raises the first failure or interruption."""
    results: list[Any] = []
    failure: BaseException | None = None
    for future in futures:
        while not future.done():
            try:
                wait([future])
            except BaseException as interrupted:  # noqa: BLE001 - raised below, once all stopped
                failure = failure or interrupted
        error = future.exception()
        if error is not None:
            failure = failure or error
            results.append(None)
            continue
        result = future.result()
        closer = result.close if isinstance(result, cluster.ControlPlane) else result.stop
        stack.callback(closer)
        results.append(result)
    if failure is not None:
        raise failure
    return results


def _settings(stack: Stack, *, history_s: float, tick_s: float) -> dict[str, Any]:
    """The daemon's settings (``prewarm.yaml`` in the state directory)."""
    step = int(stack.replay.trace.step_s)
    return {
        "logging": {"level": "info"},
        "forecaster": {
            "history_window_s": int(min(14 * 86400, history_s)),
            "prometheus": {
                "url": stack.prometheus.url,
                "step_s": step,
                # The counter the traffic generator serves; one step's rate is its count.
                "query": f"sum by (model) (rate({METRIC}[{step}s]))",
                "retries": 1,
                "timeout_s": 10,
            },
        },
        "planner": {"catalog_path": str(stack.fleet.catalog_path)},
        "actuator": {
            "namespace": PREWARM_NAMESPACE,
            "retry": {"attempts": 3, "initial_backoff_s": 0.1, "max_backoff_s": 1.0},
            "agent": {
                "token_file": str(stack.state_dir / "agent-token"),
                "status_timeout_s": 2.0,
                "timeout_s": 20.0,
            },
        },
        "daemon": {
            "mode": "active",
            "tick_s": tick_s,
            "http_port": stack.probes_port,
            "shutdown_grace_s": 5.0,
            # One replica: it leads; no Lease.
            "leader_election": {"enabled": False},
        },
        "control": {
            "listen_address": f"127.0.0.1:{stack.control_port}",
            "namespace": PREWARM_NAMESPACE,
            "auth": {
                "mode": "token",
                "tokens": [{"name": "you", "scope": "write", "file": str(stack.control_token)}],
            },
        },
    }


def _log_to_file(path: Path) -> None:
    """The daemon's logs (info and above, JSON lines) go to ``path``, not the console, which
    shows ``prewarm up``'s own lines."""
    configure_logging("info", json_format=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [handler]


DASHBOARD_RANGE_S = 6 * 3600.0
"""How much of the stack's time the rendered dashboards show, ending at the stack's now."""


def render_dashboards(prometheus_url: str, out_dir: Path, *, now_s: float) -> Path:
    """The dashboards' panels rendered from the stack's Prometheus into ``out_dir`` (the same
    queries as the Grafana JSON, as static HTML), over the last six hours of the stack's clock
    up to ``now_s``; the index page's path."""
    from prewarm.dashboards.render import render_report

    render_report(prometheus_url, out_dir, range_s=DASHBOARD_RANGE_S, step_s=60.0, now_s=now_s)
    return out_dir / "index.html"


# -- running ------------------------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM during start-up: unwind (stopping what started) like Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    # Once: a second SIGTERM must not cut the teardown short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated


def run_up(config: UpConfig, *, out: Callable[[str], None]) -> None:
    """Start the stack, run the daemon until stopped, stop everything; ``out`` prints a line.

    Raises :class:`~prewarm.up.testenv.MissingComponents` before anything starts when a binary is
    not built, and :class:`InvalidInput` for a bad trace or state directory.
    """
    binaries = stack_binaries()
    trace = read_trace(resolve_trace(config.trace))
    first_live = first_live_step(trace, lead_s=config.lead_s)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        with state_directory(config.state_dir) as state, contextlib.ExitStack() as stack:
            running = _start(config, binaries, trace, first_live, state, stack, out)
            _log_to_file(running.daemon_log)
            try:
                asyncio.run(_serve(running, config, out))
            finally:
                # Stopping: a second Ctrl-C or SIGTERM must not cut the teardown short.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            pages = render_dashboards(
                running.prometheus.url, state / "dashboards", now_s=running.clock()
            )
            out(f"dashboards: {pages}")
            ports = running.ports()
            out("stopping: daemon stopped; agents, kwok, kube-apiserver, etcd, Prometheus next")
        closed = [name for name, port in ports.items() if port_open(port)]
        if closed:
            out(f"warning: still listening after stop: {', '.join(closed)}")
        out("stopped: every process of the stack exited")
    except _Terminated:
        out("stopped (SIGTERM during start-up)")
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _start(
    config: UpConfig,
    binaries: dict[str, Path],
    trace: SeriesBatch,
    first_live: int,
    state: Path,
    stack: contextlib.ExitStack,
    out: Callable[[str], None],
) -> Stack:
    started = time.monotonic()
    replay = plan_replay(trace, first_live=first_live, now_s=time.time() + SETUP_MARGIN_S)
    clock = StackClock(replay.start_s, speed=config.speed)
    history_s = first_live * trace.step_s
    models = f"{len(trace.models)} model{'' if len(trace.models) == 1 else 's'}"
    out(
        f"prewarm up: {config.trace} ({models}, {trace.step_s:g} s steps): "
        f"{history_s / 86400:.1f} days of history, live replay at {config.speed:g}x"
    )
    control_port, probes_port = free_port(), free_port()
    control_token = write_secret(state / "control-token")
    agent_token = write_secret(state / "agent-token")
    out("starting Prometheus (backfilling the history), etcd + kube-apiserver + kwok, agents...")
    fleet = build_fleet(trace.models, state, bytes_per_gb=config.bytes_per_gb)
    caps = fleet.host_caps(config.host_share)
    nodes = {
        NodeName(f"{pool}-{index}"): str(pool)
        for pool in fleet.pools
        for index in range(config.nodes_per_pool)
    }
    with ThreadPoolExecutor(max_workers=2 + len(nodes)) as pool:
        futures: list[Future[Any]] = [
            pool.submit(_start_prometheus, binaries, replay, state / "prometheus"),
            pool.submit(
                cluster.start_control_plane,
                state / "cluster",
                apiserver_bin=binaries["PREWARM_KUBE_APISERVER_BIN"],
                etcd_bin=binaries["PREWARM_ETCD_BIN"],
                kwok_bin=binaries["PREWARM_KWOK_BIN"],
            ),
        ]
        futures += [
            pool.submit(
                start_agent,
                _agent_config(
                    state / "agents" / node,
                    models_dir=state / "models",
                    host_max_bytes=caps[PoolName(fleet_pool)],
                    token=agent_token,
                ),
                state / "agents" / node,
            )
            for node, fleet_pool in nodes.items()
        ]
        prometheus, plane, *agent_list = _gather(stack, futures)
    agents = dict(zip(nodes, agent_list, strict=True))
    api = plane.admin_client()
    kube = KubeClient(api, RetryConfig(attempts=3, initial_backoff_s=0.1, max_backoff_s=1.0))
    for namespace in (PREWARM_NAMESPACE, SERVING_NAMESPACE):
        cluster.make_namespace(api, namespace)
    for fleet_pool in fleet.pools:
        cluster.make_kwok_nodes(
            api, pool=str(fleet_pool), count=config.nodes_per_pool, gpus=config.gpus_per_node
        )
    for node, agent in agents.items():
        apply_agent_pod(kube, namespace=PREWARM_NAMESPACE, node=node, address=agent.address)
    apply_workloads(kube, fleet, namespace=SERVING_NAMESPACE)
    running = Stack(
        state_dir=state,
        replay=replay,
        clock=clock,
        fleet=fleet,
        prometheus=prometheus,
        plane=plane,
        agents=agents,
        control_port=control_port,
        probes_port=probes_port,
        settings_file=state / "prewarm.yaml",
        control_token=control_token,
        nodes=nodes,
    )
    settings = _settings(running, history_s=history_s, tick_s=config.tick_s)
    running.settings_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    out(f"started in {time.monotonic() - started:.0f} s")
    return running


async def _redraw_dashboards(
    running: Stack, stop: asyncio.Event, out: Callable[[str], None]
) -> None:
    """Draw the dashboards every :data:`DASHBOARD_REFRESH_S` wall seconds until ``stop``, on
    the stack's clock (a plain ``prewarm dashboards render`` would end its range at the wall
    clock, behind the replay). A failed drawing is said once; the next one tries again."""
    said_failure = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=DASHBOARD_REFRESH_S)
        if stop.is_set():
            return
        try:
            await asyncio.to_thread(
                render_dashboards,
                running.prometheus.url,
                running.state_dir / "dashboards",
                now_s=running.clock(),
            )
        except (OSError, PrewarmError) as error:
            if not said_failure:
                out(f"warning: dashboards not drawn: {error}")
                said_failure = True


async def _serve(running: Stack, config: UpConfig, out: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    settings = load_settings(running.settings_file)
    running.clock.start()
    clock = running.clock
    write_url = f"{running.prometheus.url}/api/v1/write"
    metrics_url = f"http://127.0.0.1:{running.probes_port}/metrics"
    pushers = [
        Pusher(
            write_url,
            lambda: traffic_samples(running.replay, clock()),
            interval_s=1.0,
            name="prewarm-up-traffic",
        ),
        Pusher(
            write_url,
            lambda: daemon_samples(metrics_url, at_s=clock()),
            interval_s=2.0,
            name="prewarm-up-daemon-metrics",
        ),
    ]
    for pusher in pushers:
        pusher.start()
    runtime = build_runtime(
        settings,
        api_client=running.plane.admin_client(),
        clock=running.clock,
        http_host="127.0.0.1",
    )
    runtime = replace(runtime, tick_wait_s=running.clock.wall_seconds(settings.daemon.tick_s))
    server = asyncio.create_task(serve(runtime, stop=stop), name="daemon")
    # The control API binds in serve(); say where everything is once it does.
    while True:
        if port_open(running.control_port) or server.done():
            break
        await asyncio.sleep(0.05)
    (running.state_dir / "stack.json").write_text(json.dumps(running.describe(), indent=2))
    for line in summary(running, config):
        out(line)
    end_s = running.replay.start_s + config.duration_s if config.duration_s is not None else None
    watcher = asyncio.create_task(watch(runtime.daemon, running, stop, out, end_s=end_s))
    drawer = asyncio.create_task(_redraw_dashboards(running, stop, out))
    try:
        await server
    finally:
        stop.set()
        for task in (watcher, drawer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pusher in pushers:
            await asyncio.to_thread(pusher.stop)
        if pushers[0].failures:
            out(f"traffic pushes that failed: {pushers[0].failures} ({pushers[0].last_error})")
