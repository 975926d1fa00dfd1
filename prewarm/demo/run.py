"""The demo: prewarm's loop on a bundled real trace with daily spikes, on one machine.

Owns: the demo's wiring. What runs is real: the trace's last day is replayed through the daemon's
own decision cycle (forecaster, planner) on a live clock, one real ``prewarm agent`` process per
node loads small generated models (same size ratios as the real ones, megabytes instead of
gigabytes) into host memory (GPU memory on a GPU machine) over gRPC, and the daemon observes
those agents as it observes them in a cluster: what they hold, their free memory, their measured
loads. The cluster actions (node capacity, pre-pulls, replica floors) are dry runs: there is no
cluster, and replicas are reported as the plan left them. The same trace then runs through the
simulator for every policy (``prewarm bench``). The report draws, for the largest spikes of the
trace's last day, one timeline each (:mod:`prewarm.demo.timeline`).

Must not: claim a cluster action happened; fetch anything from the network.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from actuator.agents import AgentActuator
from actuator.config import ActuatorConfig, AgentClientConfig
from common.durations import format_duration
from common.ids import ModelId, NodeName, PoolName
from forecaster.engine import AutoForecaster
from forecaster.sources.trace import read_trace
from forecaster.types import SeriesBatch
from planner.catalog import GB, Catalog, ModelSpec, WeightFile, default_spec
from planner.config import PlannerConfig
from prewarm.daemon.app import weight_sources
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.daemon.replay import ReplaySource
from prewarm.data import resolve_trace
from prewarm.demo.applier import AgentOnlyApplier
from prewarm.demo.cluster import LocalAgentsObserver, LocalNode, new_agent_token, start_agents
from prewarm.demo.fallbacks import Fallback, FallbackRecorder
from prewarm.demo.models import write_model
from prewarm.demo.report import DemoOutcome, write_report
from prewarm.demo.simulated import SimulatedRuns, run_policies
from prewarm.demo.spikes import DemoWindow, choose_window
from prewarm.demo.timeline import ModelTimeline, TimelineRecorder

DEFAULT_TRACE = "builtin:servegen-spiky-14d"
HORIZON_S = 3600.0
PLANNING_QUANTILE = 0.9
DEFAULT_POOL = PoolName("demo")


@dataclass(frozen=True)
class DemoConfig:
    """What to run: the trace, how many spikes to follow, the tick, where to write."""

    trace: str = DEFAULT_TRACE
    spikes: int = 4
    tick_s: float = DaemonConfig().tick_s
    nodes_per_pool: int = 1
    host_share: float = 0.6
    """Each node's host tier holds this share of its pool's models (memory pressure: evictions)."""
    out_dir: Path = Path("demo-report")
    bytes_per_gb: int = 256 * 1024
    live_view: bool = True
    baselines: bool = True


def pool_of(model: ModelId) -> PoolName:
    """A model's pool in the demo: the part of its id before ``/`` (ServeGen's ``m-large/c3`` is
    a client of the ``m-large`` model), else one pool for all."""
    head, _, tail = model.partition("/")
    return PoolName(head) if tail else DEFAULT_POOL


def demo_catalog(models: list[ModelId], models_dir: Path, bytes_per_gb: int) -> Catalog:
    """Each model's default (documented, deterministic) spec in its pool, with a generated
    safetensors file of its scaled size as its weights."""
    specs: dict[ModelId, ModelSpec] = {}
    for model in models:
        spec = default_spec(model)
        path = write_model(models_dir, model, weights_gb=spec.weights_gb, bytes_per_gb=bytes_per_gb)
        weights = WeightFile(
            uri=f"file://{path}",
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            size_bytes=path.stat().st_size,
        )
        specs[model] = ModelSpec(
            model=model,
            weights_gb=spec.weights_gb,
            image=spec.image,
            image_gb=spec.image_gb,
            replica_rps=spec.replica_rps,
            compile_s=spec.compile_s,
            node_pool=pool_of(model),
            service_s=spec.service_s,
            weights=(weights,),
        )
    return Catalog(specs=specs)


def demo_nodes(catalog: Catalog, config: DemoConfig) -> dict[NodeName, tuple[PoolName, int]]:
    """Each node's pool and host-tier cap in bytes: ``host_share`` of its pool's scaled weights,
    never less than its largest model."""
    pools: dict[PoolName, list[int]] = {}
    for spec in catalog.specs.values():
        size = sum(f.size_bytes for f in spec.weights)
        pools.setdefault(spec.node_pool, []).append(size)
    nodes: dict[NodeName, tuple[PoolName, int]] = {}
    for pool, sizes in sorted(pools.items()):
        cap = max(int(config.host_share * sum(sizes)), max(sizes)) + 1024**2
        for index in range(config.nodes_per_pool):
            nodes[NodeName(f"{pool}-node-{index}")] = (pool, cap)
    return nodes


def shifted(batch: SeriesBatch, *, shift_s: float) -> SeriesBatch:
    """``batch`` moved ``shift_s`` later in time."""
    return SeriesBatch(
        models=batch.models,
        start_s=batch.start_s + shift_s,
        step_s=batch.step_s,
        counts=batch.counts,
    )


@dataclass(frozen=True)
class LiveRun:
    """What the live part produced: the shown spikes' timelines, the catalog it generated, the
    window, the trace, the agents' answers and the models the quality gate sent to reactive."""

    timelines: list[ModelTimeline]
    catalog: Catalog
    window: DemoWindow
    batch: SeriesBatch
    counts: dict[str, int]
    fallbacks: tuple[Fallback, ...]


async def run_live(config: DemoConfig, console: Console, workdir: Path) -> LiveRun:
    """Replay the live window through the daemon and real agents; the shown models' timelines."""
    batch = read_trace(resolve_trace(config.trace))
    window = choose_window(batch, count=config.spikes)
    models = list(batch.models)
    models_dir = workdir / "models"
    models_dir.mkdir()
    catalog = demo_catalog(models, models_dir, config.bytes_per_gb)
    pools = demo_nodes(catalog, config)
    console.print(f"starting a GPU agent process for each of {', '.join(pools)}...")
    # The agents require a token, as in a cluster; the demo's daemon presents it from the file.
    token_file = new_agent_token(workdir / "agent-token")
    agents = start_agents(
        workdir / "agents",
        models_dir,
        {n: cap for n, (_, cap) in pools.items()},
        token_file=token_file,
    )
    agent_client = AgentClientConfig(token_file=str(token_file))
    live_start_trace_s = batch.start_s + window.start * batch.step_s
    # Replay on wall time from now on: the agents check preload deadlines against their clocks.
    shift_s = (time.time() // batch.step_s + 1) * batch.step_s - live_start_trace_s
    replay = shifted(batch, shift_s=shift_s)
    history = SeriesBatch(
        models=replay.models,
        start_s=replay.start_s,
        step_s=replay.step_s,
        counts=np.ascontiguousarray(replay.counts[:, : window.stop]),
    )
    nodes = [
        LocalNode(name=node, pool=pool, address=agents[node].address)
        for node, (pool, _) in pools.items()
    ]
    daemon: Daemon
    daemon_config = DaemonConfig(mode="active", tick_s=config.tick_s)
    observer = LocalAgentsObserver(
        nodes,
        latest_plan=lambda: daemon.plan(),
        catalog=catalog,
        config=agent_client,
        memory_scale=GB / config.bytes_per_gb,
    )
    address = {n.name: n.address for n in nodes}
    actuator = AgentActuator(
        ActuatorConfig(agent=agent_client),
        address_of=lambda node: _resolved(address[node]),
        weights_of=lambda model: weight_sources(catalog, model),
    )
    clock = [live_start_trace_s + shift_s]
    daemon = Daemon(
        daemon_config,
        source=ReplaySource(history),
        engine=AutoForecaster(batch.step_s, history_window_s=14 * 86400),
        observer=observer,
        applier=AgentOnlyApplier(actuator),
        catalog=catalog,
        planner_config=PlannerConfig(),
        horizon_s=HORIZON_S,
        planning_quantile=PLANNING_QUANTILE,
        step_s=batch.step_s,
        clock=lambda: clock[0],
    )
    gate = FallbackRecorder(daemon_config.quality_gate, planning_quantile=PLANNING_QUANTILE)
    recorder = TimelineRecorder(
        window.spikes,
        start_s=batch.start_s,
        step_s=batch.step_s,
        tick_s=config.tick_s,
        shift_s=shift_s,
    )
    end_s = batch.start_s + window.stop * batch.step_s + shift_s
    ticks = int((end_s - clock[0]) // config.tick_s)
    counts: dict[str, int] = {"preloads_ok": 0, "evicts_ok": 0, "errors": 0}
    live = Live(console=console, refresh_per_second=4) if config.live_view else None
    try:
        if live is not None:
            live.start()
        for tick in range(ticks):
            wall_s = time.time()
            report = await daemon.tick()
            recorder.record(
                now_s=clock[0],
                wall_s=wall_s,
                report=report,
                forecasts=dict(daemon.forecasts()),
                snapshot=daemon.observed(),
                observer=observer,
            )
            gate.record(daemon.published(), trace_s=clock[0] - shift_s)
            for outcome in report.applied:
                kind = type(outcome.action).__name__
                if outcome.result == "error":
                    counts["errors"] += 1
                elif outcome.result == "ok" and kind in ("Preload", "Evict"):
                    counts[f"{kind.lower()}s_ok"] += 1
            if live is not None and (tick % 5 == 0 or tick == ticks - 1):
                live.update(_view(recorder, clock[0] - shift_s, tick + 1, ticks))
            clock[0] += config.tick_s
    finally:
        if live is not None:
            live.stop()
        await actuator.close()
        await observer.close()
        for agent in agents.values():
            agent.stop()
    timelines = list(recorder.timelines.values())
    for line in timelines:
        line.stages_s = dict(daemon.explain(line.model).lead_times_s)
    return LiveRun(timelines, catalog, window, batch, counts, tuple(gate.fallbacks))


async def _resolved(address: str) -> str:
    return address


def _clock(seconds: float) -> str:
    return time.strftime("%a %H:%M", time.gmtime(seconds))


def _view(recorder: TimelineRecorder, now: float, tick: int, ticks: int) -> Table:
    table = Table(title=f"prewarm demo: {_clock(now)} (trace clock), tick {tick}/{ticks}")
    for column in ("model", "spike at", "forecast p90 30 min ahead", "Preload", "resident"):
        table.add_column(column)
    for line in recorder.timelines.values():
        latest = line.forecasts[-1].p90 if line.forecasts else 0.0
        table.add_row(
            line.model,
            _clock(line.onset_s),
            f"{latest:.0f} req/step",
            f"{_clock(line.preload_issued_s)} on {line.preload_node}"
            if line.preload_issued_s is not None
            else "-",
            _clock(line.resident_s) if line.resident_s is not None else "-",
        )
    return table


def _warn_fallbacks(fallbacks: tuple[Fallback, ...]) -> None:
    """One stderr line per model the quality gate sent back to reactive handling, saying why."""
    if not fallbacks:
        return
    sys.stderr.write(
        f"demo: {len(fallbacks)} model(s) fell back to reactive handling (the quality gate: "
        "their live forecast was too poor to act on, so prewarm leaves them to the autoscaler):\n"
    )
    for fallback in fallbacks:
        sys.stderr.write(f"demo:   {fallback.line()}\n")


def run_demo(config: DemoConfig, console: Console) -> DemoOutcome:
    """Run the whole demo, write its report under ``config.out_dir`` and return what it is made
    of (:func:`prewarm.demo.report.report_document` is its JSON)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="prewarm-demo-") as scratch:
        live = asyncio.run(run_live(config, console, Path(scratch)))
    live_s = time.monotonic() - started
    _warn_fallbacks(live.fallbacks)
    simulated: SimulatedRuns | None = None
    if config.baselines:
        console.print("[bold]the same trace in the simulator, every policy (prewarm bench)...[/]")
        simulated = run_policies(
            resolve_trace(config.trace),
            live.catalog,
            progress=lambda name: console.print(f"  {name}"),
        )
    outcome = DemoOutcome(
        trace=config.trace,
        batch=live.batch,
        window=live.window,
        timelines=live.timelines,
        counts=live.counts,
        simulated=simulated,
        live_s=live_s,
        wall_s=time.monotonic() - started,
        bytes_per_gb=config.bytes_per_gb,
        weights_gb={m: s.weights_gb for m, s in live.catalog.specs.items()},
        fallbacks=live.fallbacks,
    )
    files = write_report(outcome, config.out_dir)
    console.print(files["text"].read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(
        f"report: {', '.join(str(p) for p in files.values())} ({format_duration(outcome.wall_s)})"
    )
    return outcome
