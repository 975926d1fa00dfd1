"""Chaos: two daemons on one Lease, the real apiserver, Prometheus and agents, faults injected.

Real Prometheus with backfilled history (``spiky``: a daily spike; ``steady``: flat traffic), a
real kube-apiserver with kwok nodes in two pools, one real ``prewarm agent`` process per node on
127.0.0.1 (found through its agent pod's annotation), and TWO daemons in active mode, each with
its own :class:`LeaseElector` on the same Lease, its own fenced writers and its own actuator.

The daemons are IN-PROCESS, on a shared test clock (simulated time, starting at the wall clock
because the agents check Preload deadlines against theirs): each Lease round runs every retry
period and each daemon ticks every ``TICK`` of that clock. "SIGKILL of the leader" therefore
means that daemon stops ticking and renewing abruptly, releasing nothing, and is never called
again; it is not a process kill (that is
``tests/chart/test_processes.py::test_sigkill_of_the_leading_daemon_process_hands_the_lease_to_the_standby``,
two ``prewarm run`` processes as the chart runs them). The agents, the apiserver and Prometheus
are real processes.

Injected: a Prometheus outage (the daemons' source points at a dead port for a while); SIGKILL
of an agent process while it loads ``spiky``'s weights (a ``.partial`` file of its is on disk),
then a restart on the same directories; SIGKILL of the leading daemon once it has raised
``spiky``'s floor; a kube-apiserver restart (killed, down for a few Lease rounds, started again
on the same etcd) during the spike.

Asserted: the standby takes over within the lease duration plus one retry period of the leader's
last renewal; never more than one placeholder Deployment per pool or pre-pull pod per node and
image (counted by label at every tick; no controller runs, so no placeholder pods); every floor
raised is restored exactly once (one restore per raise; the Deployment's replicas return to the
original, its record annotation is gone); no ``.partial`` file and no model directory in the
agents' cache and shared-memory directories beyond what their Status reports; every model an
agent holds in memory has an open lease, or a Preload in the leader's last plan with a value
above 0 (a model with a request history never has P = 0: :mod:`planner.recency`). The events
survived and their test-clock times are printed on one line starting ``chaos events survived:``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from kubernetes import client as k8s_client

from actuator.agents import AgentActuator, PodAddressResolver
from actuator.apply import Actuator
from actuator.config import ActuatorConfig, AgentClientConfig, RetryConfig
from actuator.floors import ORIGINAL_REPLICAS
from actuator.kube import DEPLOYMENTS, PODS, KubeClient
from actuator.observer import KubeClusterObserver
from common.ids import ModelId
from common.tiers import Tier
from forecaster.config import PrometheusSourceConfig
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from forecaster.types import SeriesBatch
from planner.actions import Preload
from planner.catalog import Catalog, parse_catalog
from planner.config import PlannerConfig
from prewarm.daemon.app import ThreadedSource, weight_sources
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.leader import LeaseElector
from prewarm.daemon.loop import Daemon
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from protos.tiers import tier_from_proto
from tests.harness.agent import sha256, write_model
from tests.harness.k8s import ControlPlane, free_port, make_kwok_nodes
from tests.harness.node_agents import (
    AgentProcess,
    agent_process,
    apply_agent_pod,
    node_agent_config,
)
from tests.harness.prometheus import RunningPrometheus, prometheus_with_history
from tests.harness.workloads import deployment_body

pytestmark = [pytest.mark.chaos, pytest.mark.k8s, pytest.mark.prometheus, pytest.mark.slow]

STEP = 60.0
TICK = 60.0
"""Each daemon's tick on the test clock."""
LEASE_S = 20
RETRY_S = 4.0
DAY = 86400.0
SPIKY, STEADY = ModelId("spiky"), ModelId("steady")
SPIKE_IN_S = 15 * 60.0
"""Today's spike starts this long after the test starts (at the same time every day)."""
SPIKE_LEN_S = 15 * 60.0
END_S = SPIKE_IN_S + SPIKE_LEN_S + 20 * 60.0
"""The test clock runs this long: through the spike and until its floor is restored."""
ORIGINAL = {SPIKY: 0, STEADY: 1}
PLACEHOLDER = "app.kubernetes.io/component=capacity-placeholder"
PREPULL = "app.kubernetes.io/component=image-prepull"


def _history(start_s: float, end_s: float, spike_s: float) -> SeriesBatch:
    """Per-minute counts: ``spiky`` 10/s for ``SPIKE_LEN_S`` from the time of day of
    ``spike_s``, every day, nothing else; ``steady`` about one request a second."""
    times = np.arange(start_s, end_s, STEP)
    rng = np.random.default_rng(5)
    spike = ((times - spike_s) % DAY) < SPIKE_LEN_S
    spiky = np.where(spike, rng.poisson(600.0, times.size), 0).astype(np.float64)
    steady = rng.poisson(60.0, times.size).astype(np.float64)
    return SeriesBatch(
        models=(SPIKY, STEADY), start_s=start_s, step_s=STEP, counts=np.vstack([spiky, steady])
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[RunningPrometheus, float]]:
    now_s = math.floor(time.time() / STEP) * STEP
    history = _history(now_s - 4 * DAY, now_s, now_s + SPIKE_IN_S)
    with prometheus_with_history(history, tmp_path / "prom") as server:
        yield server, now_s


class SwitchableSource:
    """The real Prometheus source, or (``down``) one pointed at a port nothing listens on."""

    def __init__(self, url: str) -> None:
        self.down = False
        self._up = self._source(url)
        self._dead = self._source(f"http://127.0.0.1:{free_port()}")

    @staticmethod
    def _source(url: str) -> ThreadedSource:
        config = PrometheusSourceConfig(url=url, step_s=int(STEP), retries=0, timeout_s=2.0)
        return ThreadedSource(PrometheusSource(config, history_window_s=4 * DAY))

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        return await (self._dead if self.down else self._up).fetch(now_s=now_s)


@dataclass
class Replica:
    """One daemon with its own elector, writers and actuator."""

    name: str
    elector: LeaseElector
    daemon: Daemon
    source: SwitchableSource
    alive: bool = True
    last_renewal_s: float | None = None


def _replica(
    name: str,
    api: k8s_client.ApiClient,
    *,
    namespace: str,
    catalog: Catalog,
    prometheus_url: str,
    clock: list[float],
) -> Replica:
    retry = RetryConfig(attempts=2, initial_backoff_s=0.05, max_backoff_s=0.2, request_timeout_s=3)
    config = ActuatorConfig(
        namespace=namespace,
        retry=retry,
        agent=AgentClientConfig(status_timeout_s=1.0, timeout_s=20.0),
    )
    elector = LeaseElector(
        KubeClient(api, RetryConfig(attempts=1, request_timeout_s=2)),
        namespace=namespace,
        name="prewarm-leader",
        identity=name,
        lease_duration_s=LEASE_S,
        retry_period_s=RETRY_S,
        address=f"{name}.example:50051",
        clock=lambda: clock[0],
    )
    kube = KubeClient(api, retry)
    writer = KubeClient(api, retry, fence=elector.fence)
    agents = AgentActuator(
        config,
        PodAddressResolver(kube, config),
        weights_of=lambda model: weight_sources(catalog, model),
        fence=elector.fence,
    )
    source = SwitchableSource(prometheus_url)
    daemon = Daemon(
        DaemonConfig(mode="active", tick_s=TICK),
        source=source,
        engine=AutoForecaster(STEP, history_window_s=4 * DAY),
        observer=KubeClusterObserver(kube, config=config, catalog=catalog),
        applier=Actuator(writer, config, agents=agents),
        catalog=catalog,
        planner_config=PlannerConfig(),
        horizon_s=1800,
        planning_quantile=0.9,
        step_s=STEP,
        is_leader=lambda: elector.is_leader,
        leader_address=lambda: elector.leader_address,
        clock=lambda: clock[0],
    )
    return Replica(name, elector, daemon, source)


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
    compile_s: 120
    node_pool: {pool}
    workload: {{namespace: {namespace}, name: {model}}}
    weights: [{{uri: "file://{path}", sha256: "{sha256(path)}"}}]
"""
        )
    return "models:\n" + "".join(entries)


class MidLoadKiller:
    """SIGKILLs an agent process the first time a ``.partial`` file appears under its root."""

    def __init__(self, root: Path, agent: AgentProcess, clock: list[float]) -> None:
        self.killed_at_s: float | None = None
        self.partial: str | None = None
        self._root, self._agent, self._clock = root, agent, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            found = next(self._root.rglob("*.partial"), None)
            if found is not None:
                self._agent.process.send_signal(signal.SIGKILL)
                self._agent.process.wait(30)
                self.partial, self.killed_at_s = found.name, self._clock[0]
                return
            time.sleep(0.002)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_two_daemons_survive_leader_agent_apiserver_and_prometheus_failures(
    prometheus: tuple[RunningPrometheus, float],
    k8s_control_plane: ControlPlane,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    server, start_s = prometheus
    plane = k8s_control_plane
    api = plane.admin_client()
    namespace = k8s_namespace
    pool_a, pool_b = f"{namespace}-a", f"{namespace}-b"
    (node_a,) = make_kwok_nodes(api, pool=pool_a, count=1, gpus=8)
    (node_b,) = make_kwok_nodes(api, pool=pool_b, count=1, gpus=8)
    sources_dir = tmp_path / "sources"
    sources_dir.mkdir()
    sources = {
        SPIKY: sources_dir / "spiky.safetensors",
        STEADY: sources_dir / "steady.safetensors",
    }
    write_model(sources[SPIKY], seed=1, numel=75_000_000)  # 300 MB: a load lasts a while
    write_model(sources[STEADY], seed=2, numel=250_000)
    apps = k8s_client.AppsV1Api(api)
    for model, replicas in ORIGINAL.items():
        body = deployment_body(str(model), replicas=replicas, image=f"serving/{model}:v1")
        apps.create_namespaced_deployment(namespace, body)
    pools = {SPIKY: pool_a, STEADY: pool_b}
    catalog = parse_catalog(_catalog(namespace, pools, sources))
    kube = KubeClient(api, RetryConfig(attempts=4, initial_backoff_s=0.1, max_backoff_s=1.0))
    roots = {node: tmp_path / "agents" / node for node in (node_a, node_b)}
    configs = {node: node_agent_config(root, sources=sources_dir) for node, root in roots.items()}
    # A whole second: the Lease's renewTime keeps microseconds, so failover times come out exact.
    clock = [float(math.ceil(max(start_s, time.time())))]
    events: list[str] = []

    def at() -> str:
        return f"t+{clock[0] - start_s:.0f}s"

    with contextlib.ExitStack() as stack:
        agents = {
            node: stack.enter_context(agent_process(cfg, roots[node] / "run-1"))
            for node, cfg in configs.items()
        }
        for node, agent in agents.items():
            apply_agent_pod(kube, namespace=namespace, node=node, address=f"127.0.0.1:{agent.port}")
        killer = MidLoadKiller(roots[node_a], agents[node_a], clock)
        stack.callback(killer.close)
        replicas = [
            _replica(
                name,
                api,
                namespace=namespace,
                catalog=catalog,
                prometheus_url=server.url,
                clock=clock,
            )
            for name in ("daemon-a", "daemon-b")
        ]
        floor_history: list[int] = []
        restarted_agent = False
        leader_killed_s: float | None = None
        takeover_s: float | None = None
        apiserver_down_s: float | None = None
        apiserver_done = False
        prometheus_down_s: float | None = None
        prometheus_done = False
        last_plan = None
        last_leader: Replica | None = None
        next_tick_s = clock[0]

        while clock[0] < start_s + END_S:
            now = clock[0] - start_s
            # Prometheus outage: three ticks of the dead source, before the spike.
            if not prometheus_done and prometheus_down_s is None and now >= 4 * 60:
                prometheus_down_s = clock[0]
                for replica in replicas:
                    replica.source.down = True
            recovered = prometheus_down_s is not None and clock[0] - prometheus_down_s >= 3 * TICK
            if recovered and not prometheus_done:
                for replica in replicas:
                    replica.source.down = False
                prometheus_done = True
                events.append(f"prometheus outage {prometheus_down_s - start_s:.0f}s..{at()[2:]}")
            # kube-apiserver restart: during the spike, down for three Lease rounds.
            if not apiserver_done and leader_killed_s is not None and takeover_s is not None:
                if apiserver_down_s is None and now >= SPIKE_IN_S + 3 * 60:
                    plane.stop_apiserver()
                    apiserver_down_s = clock[0]
                elif apiserver_down_s is not None and clock[0] - apiserver_down_s >= 3 * RETRY_S:
                    plane.start_apiserver()
                    apiserver_done = True
                    events.append(
                        f"apiserver restart {apiserver_down_s - start_s:.0f}s..{at()[2:]}"
                    )

            for replica in replicas:
                if replica.alive and await replica.elector.try_acquire_or_renew():
                    replica.last_renewal_s = clock[0]
            leaders = [r for r in replicas if r.alive and r.elector.is_leader]
            assert len(leaders) <= 1, [r.name for r in leaders]
            if leader_killed_s is not None and takeover_s is None and leaders:
                takeover_s = clock[0]
                assert leaders[0] is not last_leader
                events.append(f"standby {leaders[0].name} took over at {at()}")
            if leaders:
                last_leader = leaders[0]

            if clock[0] >= next_tick_s:
                next_tick_s += TICK
                for replica in replicas:
                    if not replica.alive:
                        continue
                    report = await replica.daemon.tick()
                    if replica.elector.is_leader and report.plan is not None:
                        last_plan = report.plan
                up = apiserver_down_s is None or apiserver_done
                if up:
                    floor_history.append(_replicas(kube, namespace, SPIKY))
                    _assert_no_duplicates(kube, namespace)
                # The agent killed mid-load comes back one tick later, on the same directories.
                killed_s = killer.killed_at_s
                if killed_s is not None and not restarted_agent and clock[0] - killed_s >= TICK:
                    agents[node_a] = stack.enter_context(
                        agent_process(configs[node_a], roots[node_a] / "run-2")
                    )
                    address = f"127.0.0.1:{agents[node_a].port}"
                    apply_agent_pod(kube, namespace=namespace, node=node_a, address=address)
                    restarted_agent = True
                    events.append(
                        f"agent SIGKILL mid-load ({killer.partial}) at "
                        f"t+{killer.killed_at_s - start_s:.0f}s, restarted at {at()}"
                    )
                # SIGKILL of the leader once it has raised spiky's floor: no release.
                raised_now = up and floor_history[-1] > ORIGINAL[SPIKY]
                if leader_killed_s is None and raised_now and leaders:
                    victim = leaders[0]
                    victim.alive = False
                    leader_killed_s = clock[0]
                    events.append(f"leader {victim.name} SIGKILLed at {at()}")
            clock[0] += RETRY_S

        # Failover bound: from the dead leader's last renewal to the standby's first round won.
        assert leader_killed_s is not None, "spiky's floor was never raised"
        assert takeover_s is not None, "the standby never took over"
        dead = next(r for r in replicas if not r.alive)
        assert dead.last_renewal_s is not None
        failover_s = takeover_s - dead.last_renewal_s
        assert failover_s <= LEASE_S + RETRY_S, failover_s
        assert killer.killed_at_s is not None, "no agent was caught mid-load"
        assert restarted_agent
        assert apiserver_done
        assert prometheus_done

        # Floors: every raise restored exactly once (one restore per run of raised ticks, the
        # last one included); the record annotation gone.
        up = [n > ORIGINAL[SPIKY] for n in floor_history]
        raises = sum(
            1 for before, after in itertools.pairwise([False, *up]) if after and not before
        )
        assert raises, floor_history
        restores = sum(
            1
            for before, after in itertools.pairwise(floor_history)
            if before > ORIGINAL[SPIKY] and after == ORIGINAL[SPIKY]
        )
        assert restores == raises, floor_history
        assert floor_history[-1] == ORIGINAL[SPIKY], floor_history
        for model, original in ORIGINAL.items():
            deployment = kube.get(DEPLOYMENTS.path(namespace, str(model)))
            assert deployment is not None
            assert deployment["spec"]["replicas"] == original, (model, deployment["spec"])
            assert ORIGINAL_REPLICAS not in (deployment["metadata"].get("annotations") or {})
        _assert_no_duplicates(kube, namespace)

        # The agents: nothing on disk or in shared memory beyond what Status reports, and every
        # model held in memory has an open lease or a value in the leader's last plan.
        assert last_plan is not None
        planned = {(str(a.model), str(a.node)) for a in last_plan.of_type(Preload)}
        for node, agent in agents.items():
            status = _status(agent.port)
            held = {h.model_id for h in status.models if tier_from_proto(h.tier) is not None}
            partials = [p for p in roots[node].rglob("*.partial*") if "run-" not in str(p)]
            assert not partials, partials
            for tier_dir in ("cache", "shm"):
                on_disk = _model_dirs(roots[node] / tier_dir)
                assert on_disk <= held, (node, tier_dir, on_disk, held)
            for holding in status.models:
                tier = tier_from_proto(holding.tier)
                if tier is None or tier < Tier.HOST:
                    continue
                # A serving process has it attached (an open lease), or the last plan keeps it
                # (a Preload) with a value above 0, which the agent holds.
                kept = (holding.model_id, node) in planned and holding.predicted_value > 0
                assert holding.attached > 0 or kept, (
                    node,
                    holding.model_id,
                    holding.predicted_value,
                    planned,
                )

    events.append(f"failover {failover_s:.0f}s (bound {LEASE_S + RETRY_S:.0f}s)")
    print(f"\nchaos events survived: {'; '.join(events)}; took {time.monotonic() - began:.0f}s")


def _replicas(kube: KubeClient, namespace: str, model: ModelId) -> int:
    deployment = kube.get(DEPLOYMENTS.path(namespace, str(model)))
    assert deployment is not None
    return int(deployment["spec"].get("replicas") or 0)


def _assert_no_duplicates(kube: KubeClient, namespace: str) -> None:
    """One placeholder Deployment per pool, one pre-pull pod per node and image."""
    placeholders = kube.list(DEPLOYMENTS.path(namespace), label_selector=PLACEHOLDER)
    per_pool = Counter(p["metadata"]["labels"].get("prewarm.io/pool") for p in placeholders)
    assert all(n == 1 for n in per_pool.values()), per_pool
    prepulls = kube.list(PODS.path(namespace), label_selector=PREPULL)
    per_node_image = Counter(
        (p["spec"].get("nodeName"), p["metadata"]["labels"].get("prewarm.io/image-hash"))
        for p in prepulls
    )
    assert all(n == 1 for n in per_node_image.values()), per_node_image


def _status(port: int) -> pb.StatusResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status: pb.StatusResponse = pb_grpc.GpuAgentStub(channel).Status(
            pb.StatusRequest(), timeout=10
        )
    return status


def _model_dirs(root: Path) -> set[str]:
    """The model ids with a revision directory anywhere under ``root``: the agents name them
    ``<model>-<hash>@<revision>`` (the model ids here have no ``-`` or ``@``)."""
    return {entry.name.partition("@")[0].rsplit("-", 1)[0] for entry in root.rglob("*@*")}
