"""Assembles the daemon from settings and runs it: the one owner of every task of the process.

Owns: building the real components (Prometheus source, forecaster, cluster observer, actuator,
GPU-agent client, Lease elector, probe server, control API), the process lifecycle (SIGTERM/SIGINT
set one stop event; the tick in flight gets ``shutdown_grace_s``; readiness turns false; servers
stop with a grace period; the Lease is released) and one ``asyncio.TaskGroup`` for all tasks.
Must not: contain decisions (the planner) or API details (actuator, sources).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from kubernetes import config as k8s_config
from kubernetes.client import ApiClient, CoreV1Api

from actuator.agents import AgentActuator, PodAddressResolver
from actuator.apply import Actuator
from actuator.capacity import NodeCapacityActuator
from actuator.config import RetryConfig
from actuator.engines import Engines
from actuator.kube import KubeClient, default_api_client
from actuator.observer import KubeClusterObserver
from actuator.workloads import DiscoveringObserver, WorkloadDiscovery
from common.errors import FailedPrecondition, NotFound
from common.http_endpoints import ProbeServer
from common.ids import ModelId
from forecaster.engine import AutoForecaster
from forecaster.sources import PollingSource
from forecaster.sources.prometheus import PrometheusSource
from forecaster.types import SeriesBatch
from planner.catalog import ArtifactKind, Catalog, load_catalog
from prewarm.control.metrics import ControlMetrics
from prewarm.control.service import ControlServer
from prewarm.control.store import ConfigMapControlStore, ControlStore
from prewarm.daemon.leader import LeaseElector
from prewarm.daemon.loop import Daemon
from prewarm.daemon.metrics import DaemonMetrics
from prewarm.retry_logs import name_host
from prewarm.settings import Settings
from protos import gpu_agent_pb2 as pb

log = structlog.get_logger(__name__)


class ThreadedSource:
    """Runs a blocking :class:`PollingSource` (Prometheus over HTTP) in a worker thread."""

    def __init__(self, source: PollingSource) -> None:
        self._source = source

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        """The steps completed since the last successful poll."""
        return await asyncio.to_thread(self._source.poll, now_s=now_s)


@dataclass
class Runtime:
    """The assembled process: what :func:`serve` runs (tests build one with their own parts)."""

    daemon: Daemon
    probes: ProbeServer
    elector: LeaseElector | None
    control: ControlServer | None = None
    shutdown_grace_s: float = 10.0
    closers: tuple[Callable[[], object], ...] = ()
    tick_wait_s: float | None = None
    """Wall seconds between ticks when the clock is compressed (see :meth:`Daemon.run`)."""


def identity() -> str:
    """This replica's name in the Lease: the pod name (``POD_NAME`` or the hostname) + pid."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def weight_sources(catalog: Catalog, model: ModelId) -> list[pb.Source]:
    """The agent's Preload sources of ``model``: its catalog ``weights`` (with their paths, for a
    directory model; a single directory URI, ``hf://org/name@<commit>`` or
    ``s3://bucket/prefix/``, as it is: the agent lists its files).

    Raises :class:`NotFound` (that one Preload fails, the rest of the plan goes on) when the
    catalog lists none, saying what to add.
    """
    files = catalog.spec(model).weights
    if not files:
        raise NotFound(
            f"the model catalog lists no weights for {model}: add `weights: [{{uri, sha256}}]` "
            "(or one directory, `weights: [{uri: hf://org/name@<commit>}]` or "
            "`[{uri: s3://bucket/prefix/}]`) to its entry so GPU agents can preload it"
        )
    # Entries with a path make a directory model: the agent materialises it for engines.
    return [
        pb.Source(uri=f.uri, sha256=f.sha256, size_bytes=f.size_bytes, path=f.path) for f in files
    ]


_ARTIFACT_KINDS: dict[ArtifactKind, pb.ArtifactKind.ValueType] = {
    "mega_cache": pb.ARTIFACT_KIND_MEGA_CACHE,
    "inductor_cache_tar": pb.ARTIFACT_KIND_INDUCTOR_CACHE_TAR,
}


def artifact_sources(catalog: Catalog, model: ModelId) -> list[pb.Artifact]:
    """The compiled artifacts sent with every Preload of ``model``: its catalog ``artifacts``
    (none for a model without any, or one the catalog does not list)."""
    return [
        pb.Artifact(
            source=pb.Source(uri=a.uri, sha256=a.sha256),
            kind=_ARTIFACT_KINDS[a.kind],
            install_dir=a.install_dir,
        )
        for a in catalog.spec(model).artifacts
    ]


def load_model_catalog(settings: Settings) -> Catalog:
    """The configured catalog, or an empty one (every model gets documented defaults)."""
    path = settings.planner.catalog_path
    return load_catalog(Path(path)) if path else Catalog()


def build_runtime(
    settings: Settings,
    *,
    api_client: ApiClient | None = None,
    clock: Callable[[], float] = time.time,
    http_host: str = "0.0.0.0",  # probes must be reachable from the kubelet
) -> Runtime:
    """Build every component from ``settings`` (production defaults for every I/O boundary)."""
    forecaster_config = settings.forecaster
    daemon_config = settings.daemon
    metrics = DaemonMetrics()
    catalog = load_model_catalog(settings)
    api = api_client if api_client is not None else _kube_credentials()
    # urllib3's retries against the API server are logged folded, as the kube-apiserver's.
    name_host(urlsplit(api.configuration.host).hostname or "", "kube-apiserver")
    kube = KubeClient(api, settings.actuator.retry)
    source = PrometheusSource(
        forecaster_config.prometheus, history_window_s=forecaster_config.history_window_s
    )
    step_s = float(forecaster_config.prometheus.step_s)
    engine = AutoForecaster(
        step_s,
        history_window_s=forecaster_config.history_window_s,
        planning_quantile=forecaster_config.planning_quantile,
    )
    control_config = settings.control
    advertise = control_config.advertise_address or control_config.listen_address
    elector: LeaseElector | None = None
    election = daemon_config.leader_election
    if election.enabled:
        # Few, fast retries: a round must fit well inside the retry period.
        election_retry = RetryConfig(attempts=2, initial_backoff_s=0.1, request_timeout_s=5.0)
        elector = LeaseElector(
            KubeClient(api, election_retry),
            namespace=settings.actuator.namespace,
            name=election.lease_name,
            identity=identity(),
            lease_duration_s=election.lease_duration_s,
            retry_period_s=election.retry_period_s,
            address=advertise,
            clock=clock,
        )
    # Every write of the actuator (Kubernetes, agents, engines) is fenced by the Lease.
    fence = elector.fence if elector is not None else None
    writer = KubeClient(api, settings.actuator.retry, fence=fence)
    agents = AgentActuator(
        settings.actuator,
        PodAddressResolver(kube, settings.actuator),
        weights_of=lambda model: weight_sources(catalog, model),
        artifacts_of=lambda model: artifact_sources(catalog, model),
        fence=fence,
    )
    # Serving engines are called only for models whose catalog entry names one that can sleep.
    sleeps = any(s.engine for s in catalog.specs.values())
    engines = Engines(kube, catalog, fence=fence) if sleeps else None
    # Models' workloads found by the prewarm.io/model label, refreshed before each observation.
    discovery = WorkloadDiscovery(kube, catalog)
    actuator = Actuator(
        writer,
        settings.actuator,
        agents=agents,
        engines=engines,
        workload_problems=discovery.problems,
    )
    # The placeholders' PriorityClass, checked once at start-up (logged, never fatal; every
    # placement checks it again). Few, fast retries: an unreachable API must not delay start-up.
    quick = RetryConfig(attempts=2, initial_backoff_s=0.1, request_timeout_s=5.0)
    NodeCapacityActuator(KubeClient(api, quick), settings.actuator).check_at_start()
    observer = KubeClusterObserver(kube, config=settings.actuator, catalog=catalog, engines=engines)
    leader_check: Callable[[], bool] = (
        (lambda: elector.is_leader) if elector is not None else (lambda: True)
    )
    leader_address: Callable[[], str | None] = (
        (lambda: elector.leader_address) if elector is not None else (lambda: advertise)
    )
    store: ControlStore | None = None
    if control_config.enabled:
        store = ConfigMapControlStore(
            CoreV1Api(api),
            namespace=control_config.namespace,
            name=control_config.configmap_name,
            clock=clock,
        )
    daemon = Daemon(
        daemon_config,
        source=ThreadedSource(source),
        engine=engine,
        observer=DiscoveringObserver(observer, discovery),
        applier=actuator,
        catalog=catalog,
        planner_config=settings.planner,
        horizon_s=forecaster_config.horizon_s,
        planning_quantile=forecaster_config.planning_quantile,
        step_s=step_s,
        metrics=metrics,
        is_leader=leader_check,
        leader_address=leader_address,
        control_state=store.load if store is not None else None,
        source_report=source.report,
        clock=clock,
    )
    control: ControlServer | None = None
    if store is not None:
        control = ControlServer(
            config=control_config,
            store=store,
            view=daemon,
            clock=clock,
            model_bytes=lambda model: catalog.spec(model).weights_bytes,
            metrics=ControlMetrics(metrics.registry),
        )
    stopping = {"value": False}
    probes = ProbeServer(
        metrics.registry,
        ready=lambda: daemon.ready() and not stopping["value"],
        detail=daemon.problems,
        host=http_host,
        port=daemon_config.http_port,
    )
    return Runtime(
        daemon=daemon,
        probes=probes,
        elector=elector,
        control=control,
        shutdown_grace_s=daemon_config.shutdown_grace_s,
        closers=(agents.close, observer.close),
    )


def _kube_credentials() -> ApiClient:
    try:
        return default_api_client()
    except (k8s_config.ConfigException, OSError) as error:
        raise FailedPrecondition(
            "no Kubernetes credentials: run in a cluster with a ServiceAccount, or set KUBECONFIG "
            f"at a kubeconfig ({error})"
        ) from error


async def serve(runtime: Runtime, *, stop: asyncio.Event) -> None:
    """Run ``runtime`` until ``stop`` is set; then shut down in order and return."""
    if runtime.elector is not None:
        elector = runtime.elector
        runtime.daemon.metrics.is_leader.set_function(lambda: 1.0 if elector.is_leader else 0.0)
    else:
        runtime.daemon.metrics.is_leader.set(1)
    await runtime.probes.start()
    if runtime.control is not None:
        await runtime.control.start()
    log.info("prewarm daemon started", mode=runtime.daemon.config.mode)
    try:
        async with asyncio.TaskGroup() as group:
            if runtime.elector is not None:
                group.create_task(runtime.elector.run(stop), name="lease")
            group.create_task(runtime.daemon.run(stop, wait_s=runtime.tick_wait_s), name="ticks")
    finally:
        if runtime.control is not None:
            await runtime.control.stop(runtime.shutdown_grace_s)
        await runtime.probes.stop()
        for close in runtime.closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        log.info("prewarm daemon stopped")


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (the loop then finishes its tick within the grace)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def main(settings: Settings) -> None:
    """``prewarm run``: build from settings, run until SIGTERM."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    runtime = build_runtime(settings)
    await serve(runtime, stop=stop)
