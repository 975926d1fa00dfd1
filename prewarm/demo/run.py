"""The demo: the whole prewarm loop on a bundled real trace, on one machine, in about a minute.

Owns the demo's wiring and report. What runs is real: the trace is replayed through the
forecaster (``AutoForecaster``), the planner decides every simulated minute, and a real GPU agent
process loads small generated models (same size ratios as the real ones, megabytes instead of
gigabytes) into GPU memory when there is a GPU and host shared memory when not, over gRPC. The
cluster actions (node capacity, pre-pulls, replica floors) are dry runs: there is no cluster, and
the observer reports the cluster as the plan left it. The report then compares cold starts with the
policies people use today, on the same trace, in the trace-driven simulator (``prewarm bench``).

Must not: claim a cluster action happened; fetch anything from the network.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from actuator.agents import AgentActuator
from actuator.config import ActuatorConfig
from common.durations import format_duration
from common.errors import FailedPrecondition
from common.ids import ModelId, NodeName, PoolName
from forecaster.engine import AutoForecaster
from forecaster.sources.trace import read_trace
from forecaster.types import SeriesBatch
from planner.actions import Preload, ReplicaFloor, WarmPlan
from planner.catalog import GB, Catalog, ModelSpec, default_spec
from planner.config import PlannerConfig
from planner.planner import PoolState
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.daemon.replay import PlannedClusterObserver, ReplaySource
from prewarm.data import resolve_trace
from prewarm.demo.applier import AgentOnlyApplier
from prewarm.demo.models import write_model
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from protos.tiers import tier_label

DEFAULT_TRACE = "builtin:azure-functions-2019-100fn"
POOL = PoolName("demo")
NODE = NodeName("demo-node")
HORIZON_S = 1800


@dataclass(frozen=True)
class DemoConfig:
    """What to run: the trace, how many of its models, how many minutes live, where to write."""

    trace: str = DEFAULT_TRACE
    models: int = 12
    live_minutes: int = 90
    out_dir: Path = Path("demo-report")
    bytes_per_gb: int = 256 * 1024
    gpu_budget_gb: float = 160.0
    live_view: bool = True
    baselines: bool = True


@dataclass
class DemoRecord:
    """What the live run saw, step by step (for the report)."""

    models: list[ModelId]
    times_s: list[float] = field(default_factory=list)
    actual: list[list[float]] = field(default_factory=list)
    forecast_p90: list[list[float]] = field(default_factory=list)
    forecast_mean: list[list[float]] = field(default_factory=list)
    warm: list[list[bool]] = field(default_factory=list)
    agent_tiers: dict[str, int] = field(default_factory=dict)
    agent_loads_ok: int = 0
    agent_errors: int = 0


def pick_models(batch: SeriesBatch, count: int) -> list[int]:
    """Rows of ``count`` models spread over the volume range (busy, medium and rare ones)."""
    volume = np.nan_to_num(batch.counts).sum(axis=1)
    active = np.flatnonzero(volume > 0)
    ordered = active[np.argsort(-volume[active], kind="stable")]
    if len(ordered) <= count:
        return [int(row) for row in ordered]
    positions = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [int(ordered[p]) for p in positions]


def shifted_subset(batch: SeriesBatch, rows: list[int], *, live_start_s: float) -> SeriesBatch:
    """The chosen models, with time shifted so the live part starts at ``live_start_s``.

    The agent checks preload deadlines against the wall clock, so the replay runs on wall time.
    """
    return SeriesBatch(
        models=tuple(batch.models[row] for row in rows),
        start_s=live_start_s - (batch.steps - 0) * batch.step_s,
        step_s=batch.step_s,
        counts=np.ascontiguousarray(batch.counts[rows]),
    )


class AgentProcess:
    """A real ``prewarm agent`` process on 127.0.0.1 with its tiers under ``workdir``."""

    def __init__(self, workdir: Path, models_dir: Path) -> None:
        self.workdir = workdir
        self.models_dir = models_dir
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self, timeout_s: float = 60.0) -> int:
        """Start the agent and return its gRPC port; FailedPrecondition if it does not come up."""
        config = {
            "agent": {
                "listen": "127.0.0.1:0",
                "metrics_port": 0,
                "cache_dir": str(self.workdir / "cache"),
                "shm_dir": str(self.workdir / "shm"),
                "allowed_file_roots": [str(self.models_dir)],
                "host_headroom_bytes": 0,
                "disk_headroom_bytes": 0,
                "headroom_bytes": 512 * 1024**2,
            }
        }
        path = self.workdir / "agent.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        port_file = self.workdir / "agent.port"
        log = (self.workdir / "agent.log").open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prewarm",
                "--config",
                str(path),
                "agent",
                "--port-file",
                str(port_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.workdir / "agent.log").read_text(encoding="utf-8")[-1500:]
                raise FailedPrecondition(f"the GPU agent did not start:\n{tail}")
            time.sleep(0.1)
        self.port = int(port_file.read_text(encoding="utf-8").strip())
        return self.port

    def stop(self) -> None:
        """SIGTERM, then wait (the agent stops within its grace period)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def demo_catalog(
    models: list[ModelId], models_dir: Path, bytes_per_gb: int
) -> tuple[Catalog, dict[ModelId, pb.Source]]:
    """Default (documented, deterministic) specs for each model, all in the demo pool, and a
    generated safetensors file per model with its sha256."""
    specs: dict[ModelId, ModelSpec] = {}
    sources: dict[ModelId, pb.Source] = {}
    for model in models:
        spec = default_spec(model)
        spec = ModelSpec(
            model=model,
            weights_gb=spec.weights_gb,
            image=spec.image,
            image_gb=spec.image_gb,
            replica_rps=spec.replica_rps,
            compile_s=spec.compile_s,
            node_pool=POOL,
            service_s=spec.service_s,
        )
        specs[model] = spec
        path = write_model(models_dir, model, weights_gb=spec.weights_gb, bytes_per_gb=bytes_per_gb)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sources[model] = pb.Source(
            uri=f"file://{path}", sha256=digest, size_bytes=path.stat().st_size
        )
    return Catalog(specs=specs), sources


async def _agent_status(port: int) -> pb.StatusResponse | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status: pb.StatusResponse = await pb_grpc.GpuAgentStub(channel).Status(
                pb.StatusRequest(), timeout=5
            )
        except grpc.aio.AioRpcError:
            return None
        return status


def _floors(plan: WarmPlan | None) -> dict[ModelId, int]:
    if plan is None:
        return {}
    floors: dict[ModelId, int] = {}
    for floor in plan.of_type(ReplicaFloor):
        floors[floor.model] = max(floors.get(floor.model, 0), floor.min_replicas)
    return floors


def _view(
    record: DemoRecord, daemon: Daemon, status: pb.StatusResponse | None, step: int, steps: int
) -> Table:
    held = (
        {m.model_id: tier_label(m.tier, default="unspecified") for m in status.models}
        if status
        else {}
    )
    where = "GPU" if status is not None and status.gpu_available else "host memory (no GPU)"
    table = Table(title=f"prewarm demo: minute {step}/{steps}, agent tier: {where}")
    for column in (
        "model",
        "req/min now",
        "p90 next 15m",
        "replicas",
        "agent holds",
        "forecast by",
    ):
        table.add_column(column)
    forecasts = daemon.forecasts()
    floors = _floors(daemon.plan())
    actual = record.actual[-1] if record.actual else [0.0] * len(record.models)
    for index, model in enumerate(record.models):
        forecast = forecasts.get(model)
        p90 = float(forecast.quantile(0.9)[:15].max()) if forecast is not None else 0.0
        table.add_row(
            model[:28],
            f"{actual[index]:.0f}",
            f"{p90:.1f}",
            str(floors.get(model, 0)),
            held.get(model, "-"),
            forecast.method if forecast is not None else "-",
        )
    return table


async def run_live(
    config: DemoConfig, console: Console, workdir: Path
) -> tuple[DemoRecord, SeriesBatch, Path]:
    """Replay the trace's last ``live_minutes`` through the daemon and a real agent."""
    path = resolve_trace(config.trace)
    full = read_trace(path)
    rows = pick_models(full, config.models)
    if full.step_s != 60.0:
        raise FailedPrecondition(
            f"the demo needs a 1-minute trace; {config.trace} steps {full.step_s:g} s"
        )
    live_steps = min(config.live_minutes, full.steps // 2)
    models = [full.models[row] for row in rows]
    models_dir = workdir / "models"
    models_dir.mkdir()
    catalog, sources = demo_catalog(models, models_dir, config.bytes_per_gb)
    agent = AgentProcess(workdir, models_dir)
    port = agent.start()
    # Replay on wall time from now on: the agent checks preload deadlines against its clock.
    now = (time.time() // 60.0 + 1) * 60.0
    batch = shifted_subset(full, rows, live_start_s=now + live_steps * full.step_s)
    live_start = batch.start_s + (batch.steps - live_steps) * batch.step_s
    record = DemoRecord(models=models)
    agents = AgentActuator(
        ActuatorConfig(),
        address_of=lambda node: _local(port),
        weights_of=lambda model: [sources[model]],
    )
    clock = [live_start]
    daemon: Daemon
    pools = {POOL: PoolState(pool=POOL, free_gpus=8)}
    daemon = Daemon(
        DaemonConfig(mode="active", tick_s=full.step_s),
        source=ReplaySource(batch),
        engine=AutoForecaster(full.step_s, history_window_s=7 * 86400),
        observer=PlannedClusterObserver(lambda: daemon.plan(), pools=pools, nodes={POOL: NODE}),
        applier=AgentOnlyApplier(agents),
        catalog=catalog,
        planner_config=PlannerConfig(gpu_memory_budget_bytes=int(config.gpu_budget_gb * GB)),
        horizon_s=HORIZON_S,
        planning_quantile=0.9,
        step_s=full.step_s,
        clock=lambda: clock[0],
    )
    live: Live | None = (
        Live(console=console, refresh_per_second=8, transient=False) if config.live_view else None
    )
    try:
        if live is not None:
            live.start()
        for step in range(live_steps):
            floors_before = _floors(daemon.plan())
            report = await daemon.tick()
            column = batch.steps - live_steps + step
            actual = np.nan_to_num(batch.counts[:, column]).tolist()
            forecasts = daemon.forecasts()
            record.times_s.append(clock[0])
            record.actual.append(actual)
            ahead = [forecasts.get(m) for m in models]
            record.forecast_p90.append(
                [float(f.quantile(0.9)[14]) if f and f.horizon > 14 else 0.0 for f in ahead]
            )
            record.forecast_mean.append(
                [float(f.mean[14]) if f and f.horizon > 14 else 0.0 for f in ahead]
            )
            record.warm.append([floors_before.get(m, 0) > 0 for m in models])
            record.agent_loads_ok += sum(
                1 for o in report.applied if isinstance(o.action, Preload) and o.result == "ok"
            )
            record.agent_errors += sum(1 for o in report.applied if o.result == "error")
            if live is not None and (step % 2 == 0 or step == live_steps - 1):
                status = await _agent_status(port)
                live.update(_view(record, daemon, status, step + 1, live_steps))
            clock[0] += full.step_s
        status = await _agent_status(port)
        if status is not None:
            for holding in status.models:
                name = tier_label(holding.tier, default="unspecified")
                record.agent_tiers[name] = record.agent_tiers.get(name, 0) + 1
    finally:
        if live is not None:
            live.stop()
        await agents.close()
        agent.stop()
    return record, batch, path


async def _local(port: int) -> str:
    return f"127.0.0.1:{port}"


def live_cold_ratio(record: DemoRecord) -> float:
    """Share of the live run's requests that arrived in a minute with no planned replica."""
    actual = np.asarray(record.actual)
    warm = np.asarray(record.warm)
    total = actual.sum()
    return float(actual[~warm].sum() / total) if total else 0.0


def run_baselines(
    path: Path, console: Console, *, progress: Callable[[str], None] | None = None
) -> dict[str, dict[str, float]]:
    """Every policy on the same trace in the simulator (what ``prewarm bench`` runs)."""
    from prewarm.sim.bench import load_bench_input, run_bench
    from prewarm.sim.policies import POLICY_NAMES

    bench = load_bench_input(path, Catalog())
    results = run_bench(bench, list(POLICY_NAMES))
    return {name: result.summary() for name, result in results.items()}


def write_report(
    config: DemoConfig,
    record: DemoRecord,
    baselines: dict[str, dict[str, float]],
    *,
    wall_s: float,
) -> dict[str, Path]:
    """report.json, report.txt and report.png under ``config.out_dir``; their paths."""
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "trace": config.trace,
        "models": list(record.models),
        "live_minutes": len(record.times_s),
        "live_cold_start_ratio": live_cold_ratio(record),
        "agent_loads_ok": record.agent_loads_ok,
        "agent_errors": record.agent_errors,
        "agent_holdings_at_end": record.agent_tiers,
        "baselines": baselines,
        "wall_s": wall_s,
    }
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"prewarm demo on {config.trace}: {len(record.models)} models, "
        f"{len(record.times_s)} live minutes, {wall_s:.0f} s wall",
        f"live run (real forecaster, planner and GPU agent; cluster actions dry-run): "
        f"{live_cold_ratio(record):.1%} of requests arrived with no planned replica; "
        f"{record.agent_loads_ok} preload calls answered ok by the agent, "
        f"{record.agent_errors} action errors; "
        f"agent holds at the end: {record.agent_tiers or 'nothing'}",
    ]
    if baselines:
        lines.append("")
        lines.append("same trace in the simulator (prewarm bench), all models:")
        lines.append(
            f"{'policy':<18} {'cold_start_ratio':>16} {'idle_gpu_gb_hours':>18} {'wait_p99_s':>11}"
        )
        for name, summary in baselines.items():
            lines.append(
                f"{name:<18} {summary['cold_start_ratio']:>16.4f} "
                f"{summary['idle_gpu_gb_hours']:>18.1f} {summary['wait_p99_s']:>11.1f}"
            )
    (out / "report.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(record, baselines, out / "report.png")
    _html(document, lines, out / "report.png", out / "report.html")
    return {
        "json": out / "report.json",
        "text": out / "report.txt",
        "png": out / "report.png",
        "html": out / "report.html",
    }


def _html(document: dict[str, Any], lines: list[str], png: Path, path: Path) -> None:
    """A one-page HTML report (the PNG embedded), viewable anywhere and easy to screenshot."""
    import base64
    import html

    image = base64.b64encode(png.read_bytes()).decode("ascii")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{summary['cold_start_ratio']:.4f}</td>"
        f"<td>{summary['idle_gpu_gb_hours']:.1f}</td><td>{summary['wait_p99_s']:.1f}</td></tr>"
        for name, summary in document["baselines"].items()
    )
    table = (
        "<table><tr><th>policy</th><th>cold_start_ratio</th><th>idle_gpu_gb_hours</th>"
        f"<th>wait_p99_s</th></tr>{rows}</table>"
        if rows
        else ""
    )
    summary = "".join(f"<p>{html.escape(line)}</p>" for line in lines[:2])
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>prewarm demo</title><style>"
        "body{font-family:sans-serif;margin:24px;background:#111217;color:#ccccdc}"
        "h1{font-size:20px}table{border-collapse:collapse;margin-top:12px}"
        "td,th{border:1px solid #333;padding:4px 10px;text-align:right}"
        "img{max-width:100%;background:white;margin-top:12px}</style></head><body>"
        f"<h1>prewarm: forecast vs actual and cold starts</h1>{summary}"
        f"<img alt='forecast vs actual' src='data:image/png;base64,{image}'>{table}"
        "</body></html>\n",
        encoding="utf-8",
    )


def _plot(record: DemoRecord, baselines: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actual = np.asarray(record.actual)
    busiest = list(np.argsort(-actual.sum(axis=0))[:3]) if actual.size else []
    figure, axes = plt.subplots(
        1, len(busiest) + (1 if baselines else 0), figsize=(5 * (len(busiest) + 1), 3.6)
    )
    axes = np.atleast_1d(axes)
    minutes = np.arange(len(record.times_s))
    p90 = np.asarray(record.forecast_p90)
    mean = np.asarray(record.forecast_mean)
    for axis, row in zip(axes, busiest, strict=False):
        # The forecast made 15 minutes earlier for this minute, against what came.
        axis.plot(minutes, actual[:, row], label="actual", color="black", linewidth=1)
        axis.plot(
            minutes[15:], mean[:-15, row] if len(mean) > 15 else [], label="forecast (15 min ahead)"
        )
        axis.fill_between(
            minutes[15:], 0, p90[:-15, row] if len(p90) > 15 else [], alpha=0.2, label="p90 band"
        )
        axis.set_title(str(record.models[row])[:30], fontsize=9)
        axis.set_xlabel("minute")
        axis.set_ylabel("requests / minute")
        axis.legend(fontsize=7)
    if baselines:
        axis = axes[-1]
        names = list(baselines)
        axis.bar(names, [baselines[n]["cold_start_ratio"] for n in names], color="tab:blue")
        axis.set_title("cold-start ratio by policy (simulator)", fontsize=9)
        axis.tick_params(axis="x", rotation=45, labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_demo(config: DemoConfig, console: Console) -> dict[str, Path]:
    """Run the whole demo and write its report; returns the report files."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="prewarm-demo-") as scratch:
        record, _batch, path = asyncio.run(run_live(config, console, Path(scratch)))
    baselines: dict[str, dict[str, float]] = {}
    if config.baselines:
        console.print("[bold]running the same trace through the simulator for every policy...[/]")
        baselines = run_baselines(path, console)
    wall_s = time.monotonic() - started
    files = write_report(config, record, baselines, wall_s=wall_s)
    console.print((config.out_dir / "report.txt").read_text(encoding="utf-8"))
    console.print(
        f"report: {', '.join(str(p) for p in files.values())} ({format_duration(wall_s)})"
    )
    return files
