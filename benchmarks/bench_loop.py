"""Benchmark of the daemon's loop on one machine: forecast -> Preload issued -> weights resident.

Usage: ``python benchmarks/bench_loop.py [--runs 5] [--gb-per-model 0.256] [--scenario both]
[--json OUT]``

Each run starts a fresh real ``prewarm agent`` process (:mod:`prewarm.demo.cluster`) and a fresh
:class:`prewarm.daemon.loop.Daemon` in active mode, wired as the demo wires them
(:func:`prewarm.demo.run.run_live`: replayed history, ``AutoForecaster``, the agent observed
through its ``Status`` with ``memory_scale=1``, Preload/Evict sent over gRPC). History: four days
of per-minute counts in which model ``spiky`` has a one-hour spike (Poisson 600/min) every day,
today's starting 20 minutes after the daemon's clock starts, and ``flat`` has steady traffic; the
minutes after the clock's start are replayed one at a time as the clock passes them. The daemon
ticks on its own clock (``DaemonConfig().tick_s`` per tick, starting at wall time rounded up to
the minute: the agent checks Preload deadlines against its wall clock) until a Preload of
``spiky`` is answered ok in every measured tier, or the spike starts.

Two planner settings (``--scenario``), each with its own agent and daemon in every run:

- ``forecast``: ``PlannerConfig(host_min_value_density=1e-9)``. Host memory holds only models
  whose forecast gives them a value, so spiky's Preload is the one its forecast causes, about two
  minutes before the spike, on a daemon that has ticked for 18 minutes.
- ``default``: ``PlannerConfig()``, as the demo runs it. It fills host memory while there is room,
  so spiky's Preload comes on the fresh daemon's first tick, before its forecast says anything
  about spiky; that tick includes the first forecast (model fit).

Timed with ``time.perf_counter()`` in this process:

- *forecast refresh*: the forecast engine's time (``observe`` + ``forecast``, timed by a wrapper
  around the engine passed in) in the latest tick in which it ran, up to the Preload's tick. The
  engine runs when a new minute of history arrives (every 4th tick), not every tick;
- *tick that issued the Preload*: its whole ``Daemon.tick()``;
- *tick start -> Preload sent*: fetch, forecast, observation, plan, until the Preload RPC leaves;
- *Preload RPC*: sent -> answered. The agent streams progress and answers (``STAGE_DONE``) once
  the weights are held, so this contains the whole load;
- *weights resident*: Preload sent -> the first ``Status`` (polled every 10 ms from a thread)
  that shows ``spiky`` held in the tier with ``loaded_at`` set; *answer -> Status* is what that
  adds to the RPC's answer (the poll's granularity);
- *agent load_duration_s*: the agent's own measure of the load (request received -> committed);
- *full loop*: tick start -> resident.

Baseline, in the same run (after both scenarios' loops): a fresh Python process loads the same
safetensors file with ``safetensors.torch.load_file`` and prints its own ``perf_counter`` delta,
so the interpreter's start and imports are excluded. On the CPU ``load_file`` maps the file, so
the child also reads every page (one element in 1,024), as a first forward pass would; with CUDA
a second child loads with ``device="cuda"``, CUDA initialised before its clock starts. Nothing is
dropped from the page cache for this baseline (the file is cached, as it is for the agent); a
second figure drops the file from the page cache first (fsync + ``posix_fadvise``), then the
cached load runs again, which also re-reads the file into the cache for the next run. Ratios are
per run, then the median over runs.

Tiers: without a GPU the agent holds a Preload in host shared memory (the host tier). With CUDA
each tier a Preload of ``spiky`` reaches before the spike is measured (the host copy, then the
replica's GPU load); a tier no Preload reached is reported as such.

The agent's directories (disk cache and host tier) are on ``/dev/shm`` when it exists:
``AgentProcess`` keeps both under one work directory, and the host tier belongs on tmpfs. The
weight files (random float16) are written once per invocation; each run's agent directories are
removed after it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402

from actuator.agents import AddressOf, AgentActuator, AgentResult, WeightsOf  # noqa: E402
from actuator.config import ActuatorConfig  # noqa: E402
from common.ids import ModelId, NodeName, PoolName  # noqa: E402
from common.tiers import Tier  # noqa: E402
from forecaster.engine import AutoForecaster  # noqa: E402
from forecaster.types import Forecast, ForecastEngine, SeriesBatch  # noqa: E402
from planner.actions import Preload  # noqa: E402
from planner.catalog import GB, Catalog, ModelSpec, WeightFile  # noqa: E402
from planner.config import PlannerConfig  # noqa: E402
from prewarm.daemon.app import weight_sources  # noqa: E402
from prewarm.daemon.config import DaemonConfig  # noqa: E402
from prewarm.daemon.loop import Daemon  # noqa: E402
from prewarm.daemon.replay import ReplaySource  # noqa: E402
from prewarm.demo.applier import AgentOnlyApplier  # noqa: E402
from prewarm.demo.cluster import LocalAgentsObserver, LocalNode, start_agents  # noqa: E402
from prewarm.logging import configure_logging  # noqa: E402
from protos import gpu_agent_pb2 as pb  # noqa: E402
from protos import gpu_agent_pb2_grpc as pb_grpc  # noqa: E402
from protos.tiers import tier_from_proto  # noqa: E402

STEP_S = 60.0
DAY_S = 86400.0
HISTORY_DAYS = 4
SPIKE_IN_S = 20 * 60.0
"""Today's spike of ``spiky`` starts this long after the daemon's clock starts."""
HORIZON_S = 3600.0
"""The forecast horizon (the demo's)."""
SPIKY, FLAT = ModelId("spiky"), ModelId("flat")
POOL = PoolName("bench")
NODE = NodeName("bench-node-0")
COMPILE_S = 120.0
"""spiky's compile time: part of its lead time, so of how early its weights are planned."""
POLL_S = 0.01
MIB = 1024**2
TENSOR_BYTES = 64 * MIB

STAGES: tuple[tuple[str, str], ...] = (
    ("forecast_s", "forecast refresh (engine, latest tick with one)"),
    ("forecast_tick_s", "  that whole tick"),
    ("tick_s", "tick that issued the Preload"),
    ("to_sent_s", "tick start -> Preload sent"),
    ("rpc_s", "Preload RPC, sent -> answered"),
    ("issued_s", "tick start -> Preload answered"),
    ("resident_s", "weights resident (Preload sent -> Status)"),
    ("answer_to_status_s", "  answer -> Status shows held"),
    ("agent_load_s", "agent load_duration_s"),
    ("full_loop_s", "full loop (tick start -> resident)"),
    ("cold_load_s", "baseline: cold load_file, fresh process"),
    ("cold_dropped_s", "  same, file dropped from page cache"),
)
RATIOS: tuple[tuple[str, str, str], ...] = (
    ("resident_s", "cold_load_s", "weights resident / cold load"),
    ("agent_load_s", "cold_load_s", "agent load_duration_s / cold load"),
    ("full_loop_s", "cold_load_s", "full loop / cold load"),
    ("resident_s", "cold_dropped_s", "weights resident / cold load, cache dropped"),
    ("full_loop_s", "cold_dropped_s", "full loop / cold load, cache dropped"),
)


def log(message: str) -> None:
    """Progress, on stderr (stdout carries the table)."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- weights, history


def write_weights(path: Path, nbytes: int, *, seed: int) -> None:
    """A safetensors file of random float16 tensors (64 MiB each) totalling about ``nbytes``."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, torch.Tensor] = {}
    remaining = nbytes // 2 * 2
    index = 0
    while remaining > 0:
        size = min(TENSOR_BYTES, remaining)
        values = rng.standard_normal(size // 2, dtype=np.float32).astype(np.float16)
        tensors[f"layer{index}.weight"] = torch.from_numpy(values)
        remaining -= size
        index += 1
    safetensors.torch.save_file(tensors, str(path))
    # Written back before the first run, so no run's loads share the disk with the writeback.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(16 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def history(start_s: float, end_s: float, spike_s: float) -> SeriesBatch:
    """Per-minute counts: ``spiky`` Poisson(600) per minute for an hour from the time of day of
    ``spike_s``, every day, else nothing; ``flat`` Poisson(60) per minute throughout."""
    times = np.arange(start_s, end_s, STEP_S)
    rng = np.random.default_rng(11)
    spike = ((times - spike_s) % DAY_S) < 3600.0
    spiky = np.where(spike, rng.poisson(600.0, times.size), 0).astype(np.float64)
    flat = rng.poisson(60.0, times.size).astype(np.float64)
    return SeriesBatch(
        models=(SPIKY, FLAT), start_s=start_s, step_s=STEP_S, counts=np.vstack([spiky, flat])
    )


def catalog_of(files: dict[ModelId, Path]) -> Catalog:
    """Each model in the bench pool; ``weights_gb`` is its file's real size, so the planner's
    memory accounting matches what the agent holds (the observer's ``memory_scale`` is 1)."""
    specs: dict[ModelId, ModelSpec] = {}
    for model, path in files.items():
        size = path.stat().st_size
        specs[model] = ModelSpec(
            model=model,
            weights_gb=size / GB,
            image="registry.example.com/serving/bench:v1",
            image_gb=5.0,
            replica_rps=5.0,
            compile_s=COMPILE_S if model == SPIKY else 10.0,
            node_pool=POOL,
            weights=(WeightFile(uri=f"file://{path}", sha256=sha256_of(path), size_bytes=size),),
        )
    return Catalog(specs=specs)


# ------------------------------------------------------------------------- timing instruments


class TimedEngine:
    """A :class:`ForecastEngine` that adds the time spent in the wrapped engine to ``spent_s``."""

    def __init__(self, engine: ForecastEngine) -> None:
        self._engine = engine
        self.spent_s = 0.0
        self.calls = 0

    def observe(self, batch: SeriesBatch) -> None:
        started = time.perf_counter()
        self.calls += 1
        try:
            self._engine.observe(batch)
        finally:
            self.spent_s += time.perf_counter() - started

    def forecast(
        self, *, horizon_steps: int, quantiles: tuple[float, ...]
    ) -> dict[ModelId, Forecast]:
        started = time.perf_counter()
        self.calls += 1
        try:
            return self._engine.forecast(horizon_steps=horizon_steps, quantiles=quantiles)
        finally:
            self.spent_s += time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class PreloadCall:
    action: Preload
    sent: float
    answered: float
    result: AgentResult


class TimedActuator(AgentActuator):
    """The production actuator, recording when each Preload RPC left and was answered."""

    def __init__(
        self, config: ActuatorConfig, address_of: AddressOf, *, weights_of: WeightsOf
    ) -> None:
        super().__init__(config, address_of, weights_of=weights_of)
        self.calls: list[PreloadCall] = []

    async def preload(self, action: Preload, *, now_s: float, dry_run: bool = False) -> AgentResult:
        sent = time.perf_counter()
        result = await super().preload(action, now_s=now_s, dry_run=dry_run)
        self.calls.append(PreloadCall(action, sent, time.perf_counter(), result))
        return result


@dataclass(slots=True)
class Seen:
    """What the Status poller saw of one tier: when first, and the holding then."""

    at: float
    holding: pb.ModelHolding


class StatusPoller:
    """Polls the agent's ``Status`` every :data:`POLL_S` in a thread (so a busy event loop in the
    daemon does not delay it); records when ``model`` was first seen held in each tier with a
    recorded load (``loaded_at`` set)."""

    def __init__(self, address: str, model: ModelId) -> None:
        self._address = address
        self._model = model
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[Tier, Seen] = {}
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)
        self.errors = 0

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def seen(self, tier: Tier) -> Seen | None:
        with self._lock:
            return self._seen.get(tier)

    def _run(self) -> None:
        with grpc.insecure_channel(self._address) as channel:
            stub = pb_grpc.GpuAgentStub(channel)
            while not self._stop.is_set():
                try:
                    status = stub.Status(pb.StatusRequest(), timeout=5)
                except grpc.RpcError:
                    self.errors += 1
                    self._stop.wait(POLL_S)
                    continue
                now = time.perf_counter()
                for holding in status.models:
                    tier = tier_from_proto(holding.tier)
                    if (
                        holding.model_id != self._model
                        or tier is None
                        or tier < Tier.HOST
                        or not holding.HasField("loaded_at")
                    ):
                        continue
                    with self._lock:
                        self._seen.setdefault(tier, Seen(now, holding))
                self._stop.wait(POLL_S)


# ---------------------------------------------------------------------------------- baseline

COLD_CHILD = textwrap.dedent(
    """
    import sys, time
    import safetensors.torch, torch
    path, device = sys.argv[1], sys.argv[2]
    if device != "cpu":
        torch.cuda.init()
        torch.empty(1, device=device)
        torch.cuda.synchronize()
    started = time.perf_counter()
    tensors = safetensors.torch.load_file(path, device=device)
    if device == "cpu":
        # load_file maps the file: read one element in every 1,024 (every page) so the weights
        # are in this process's memory, as a model's first forward pass would have them.
        sum(float(t.reshape(-1)[::1024].double().sum()) for t in tensors.values())
    else:
        torch.cuda.synchronize()
    print(time.perf_counter() - started)
    """
)


def cold_load_s(path: Path, device: str) -> float:
    """``load_file(path, device)`` in a fresh process, timed by the child (imports excluded)."""
    done = subprocess.run(
        [sys.executable, "-c", COLD_CHILD, str(path), device],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cold-load child failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def drop_page_cache(path: Path) -> bool:
    """Evict ``path`` from the page cache (fsync, then posix_fadvise DONTNEED: dirty pages of a
    file just written stay cached otherwise); True when the kernel accepted it."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def baselines(path: Path, device: str) -> dict[str, float]:
    """The cold load as specified (page cache as the run left it: the file is cached), and the
    same after dropping the file from the page cache when the kernel allows. The cached load
    runs last, so the next run's agent reads the source from the page cache as this one did."""
    out: dict[str, float] = {}
    if drop_page_cache(path):
        out["cold_dropped_s"] = cold_load_s(path, device)
    out["cold_load_s"] = cold_load_s(path, device)
    return out


# ---------------------------------------------------------------------------------- one run


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    planner: PlannerConfig
    about: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "forecast",
        # Any positive threshold: host memory then holds only models whose forecast gives them
        # a value, so spiky is not preloaded until its spike comes within its planning window.
        PlannerConfig(host_min_value_density=1e-9),
        "host_min_value_density=1e-9: spiky's Preload comes from its forecast, minutes before "
        "the spike, on a daemon that has been ticking",
    ),
    Scenario(
        "default",
        PlannerConfig(),
        "PlannerConfig() as the demo runs it: host memory is filled while it has room, so "
        "spiky's Preload comes on the first tick of a fresh daemon (its first forecast, model "
        "fit included)",
    ),
)


@dataclass(slots=True)
class RunResult:
    figures: dict[Tier, dict[str, float]] = field(default_factory=dict)
    ticks: int = 0
    notes: list[str] = field(default_factory=list)
    preloads: list[dict[str, Any]] = field(default_factory=list)
    """Each answered Preload of ``spiky`` measured: the tick, the planned tier, reason, answer."""


def one_run(
    index: int,
    files: dict[ModelId, Path],
    *,
    scenario: Scenario,
    tiers: Sequence[Tier],
    scratch_root: Path | None,
) -> RunResult:
    """One fresh agent and daemon, ticked until ``spiky``'s Preload is answered in every tier of
    ``tiers`` (or its spike starts); the figures of each tier reached, without the baseline."""
    catalog = catalog_of(files)
    host_cap = sum(p.stat().st_size for p in files.values()) + 64 * MIB
    workdir = Path(tempfile.mkdtemp(prefix=f"prewarm-bench-loop-{index}-", dir=scratch_root))
    run = RunResult()
    try:
        agents = start_agents(workdir, files[SPIKY].parent, {NODE: host_cap})
        agent = agents[NODE]
        try:
            asyncio.run(_tick_until_resident(agent.address, catalog, scenario, tiers, run))
        finally:
            agent.stop()
        if not run.figures:
            tail = (workdir / NODE / "agent.log").read_text(encoding="utf-8")[-3000:]
            run.notes.append(f"agent log tail:\n{tail}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return run


@dataclass(slots=True)
class Refresh:
    """The latest tick in which the daemon's forecast engine ran."""

    tick: int = 0
    engine_s: float = 0.0
    tick_s: float = 0.0


async def _tick_until_resident(
    address: str, catalog: Catalog, scenario: Scenario, tiers: Sequence[Tier], run: RunResult
) -> None:
    # The agent checks Preload deadlines against its wall clock, so the daemon's clock starts at
    # wall time, rounded up to the next whole step, and is never behind the agent's (a host
    # Preload's deadline is only one tick ahead). History before the clock's start is fetched
    # on the first tick; the rest is replayed a minute at a time as the clock passes it.
    start_s = math.ceil(time.time() / STEP_S) * STEP_S
    spike_s = start_s + SPIKE_IN_S
    batch = history(start_s - HISTORY_DAYS * DAY_S, spike_s + 3600.0, spike_s)
    engine = TimedEngine(AutoForecaster(STEP_S, history_window_s=HISTORY_DAYS * DAY_S))
    daemon: Daemon
    observer = LocalAgentsObserver(
        [LocalNode(name=NODE, pool=POOL, address=address)],
        latest_plan=lambda: daemon.plan(),
        catalog=catalog,
        memory_scale=1.0,
    )
    actuator = TimedActuator(
        ActuatorConfig(),
        address_of=lambda node: _resolved(address),
        weights_of=lambda model: weight_sources(catalog, model),
    )
    tick_s = DaemonConfig().tick_s
    clock = [start_s]
    daemon = Daemon(
        DaemonConfig(mode="active", tick_s=tick_s),
        source=ReplaySource(batch),
        engine=engine,
        observer=observer,
        applier=AgentOnlyApplier(actuator),
        catalog=catalog,
        planner_config=scenario.planner,
        horizon_s=HORIZON_S,
        planning_quantile=0.9,
        step_s=STEP_S,
        clock=lambda: clock[0],
    )
    refresh = Refresh()
    try:
        with StatusPoller(address, SPIKY) as poller:
            while clock[0] < spike_s and not all(t in run.figures for t in tiers):
                engine.spent_s, engine.calls = 0.0, 0
                del actuator.calls[:]
                started = time.perf_counter()
                report = await daemon.tick()
                ended = time.perf_counter()
                run.ticks += 1
                if engine.calls:
                    refresh = Refresh(run.ticks, engine.spent_s, ended - started)
                errors = [o for o in report.applied if o.result == "error"]
                if errors:
                    run.notes.append(f"tick {run.ticks}: {errors}")
                for call in actuator.calls:
                    if call.action.model != SPIKY or not call.result.ok:
                        continue
                    figures = await _figures(call, poller, started, ended, refresh)
                    if figures is None:
                        run.notes.append(f"tick {run.ticks}: {call.result.detail}: not seen held")
                        continue
                    tier, stage = figures
                    if tier in run.figures:
                        continue
                    run.figures[tier] = stage
                    run.preloads.append(
                        {
                            "tick": run.ticks,
                            "forecast_refresh_tick": refresh.tick,
                            "seconds_before_spike": spike_s - clock[0],
                            "planned_tier": call.action.tier.label,
                            "held_tier": tier.label,
                            "reason": call.action.reason,
                            "answer": call.result.detail,
                            "other_preloads_in_tick": [
                                f"{c.action.model} {c.action.tier.label}"
                                for c in actuator.calls
                                if c is not call
                            ],
                        }
                    )
                clock[0] += tick_s
            if not run.figures:
                plan = daemon.model_plans().get(SPIKY)
                run.notes.append(f"no Preload of spiky answered ok; its plan: {plan}")
    finally:
        await actuator.close()
        await observer.close()


async def _figures(
    call: PreloadCall, poller: StatusPoller, started: float, ended: float, refresh: Refresh
) -> tuple[Tier, dict[str, float]] | None:
    """The stage times of one answered Preload of ``spiky``: in the tier it reached (the agent
    keeps a GPU Preload in host memory without a GPU), once the poller saw it held there."""
    seen: Seen | None = None
    deadline = time.perf_counter() + 5.0
    while time.perf_counter() < deadline:
        for tier in (Tier.GPU, Tier.HOST):
            found = poller.seen(tier)
            if tier <= call.action.tier and found is not None and found.at >= call.sent:
                seen = found
                break
        if seen is not None:
            break
        await asyncio.sleep(POLL_S)
    if seen is None:
        return None
    reached = tier_from_proto(seen.holding.tier)
    assert reached is not None
    return reached, {
        "forecast_s": refresh.engine_s,
        "forecast_tick_s": refresh.tick_s,
        "tick_s": ended - started,
        "to_sent_s": call.sent - started,
        "rpc_s": call.answered - call.sent,
        "issued_s": call.answered - started,
        "resident_s": seen.at - call.sent,
        "answer_to_status_s": seen.at - call.answered,
        "agent_load_s": float(seen.holding.load_duration_s),
        "full_loop_s": seen.at - started,
        "loaded_bytes": float(seen.holding.loaded_bytes),
    }


async def _resolved(address: str) -> str:
    return address


# ------------------------------------------------------------------------------------ report


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, min and max over runs of every stage and ratio."""
    out: dict[str, dict[str, float]] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        out[key] = {
            "median": float(statistics.median(values)),
            "min": min(values),
            "max": max(values),
        }
    return out


def with_ratios(figures: dict[str, float]) -> dict[str, float]:
    out = dict(figures)
    for num, den, _ in RATIOS:
        if den in figures:
            out[f"{num}/{den}"] = figures[num] / figures[den]
    return out


def table(title: str, stats: dict[str, dict[str, float]], runs: int) -> str:
    lines = [f"{title} ({runs} runs)", f"{'stage':<46} {'median':>9} {'min':>9} {'max':>9}"]
    for key, label in STAGES:
        if key not in stats:
            continue
        s = stats[key]
        lines.append(f"{label:<46} {_ms(s['median']):>9} {_ms(s['min']):>9} {_ms(s['max']):>9}")
    for num, den, label in RATIOS:
        if f"{num}/{den}" not in stats:
            continue
        s = stats[f"{num}/{den}"]
        lines.append(f"{label:<46} {s['median']:>8.2f}x {s['min']:>8.2f}x {s['max']:>8.2f}x")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if abs(seconds) < 10 else f"{seconds:.1f} s"


# -------------------------------------------------------------------------------------- main


def measure(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    cuda = torch.cuda.is_available()
    tiers = (Tier.HOST, Tier.GPU) if cuda else (Tier.HOST,)
    scenarios = [s for s in SCENARIOS if args.scenario in (s.name, "both")]
    shm = Path("/dev/shm")
    scratch_root = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    sources = Path(tempfile.mkdtemp(prefix="prewarm-bench-loop-models-"))
    spiky_bytes = int(args.gb_per_model * GB)
    flat_bytes = max(MIB, spiky_bytes // 64)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "runs": args.runs,
        "tick_s": DaemonConfig().tick_s,
        "spike_in_s": SPIKE_IN_S,
    }
    try:
        log(f"writing weights: spiky {spiky_bytes / GB:.3f} GB, flat {flat_bytes / GB:.3f} GB")
        files = {SPIKY: sources / "spiky.safetensors", FLAT: sources / "flat.safetensors"}
        write_weights(files[SPIKY], spiky_bytes, seed=1)
        write_weights(files[FLAT], flat_bytes, seed=2)
        report["file_bytes"] = {m: p.stat().st_size for m, p in files.items()}
        per_tier: dict[str, dict[Tier, list[dict[str, float]]]] = {
            s.name: {tier: [] for tier in tiers} for s in scenarios
        }
        preloads: list[dict[str, Any]] = []
        notes: list[str] = []
        for index in range(args.runs):
            run_began = time.perf_counter()
            runs = {
                s.name: one_run(index, files, scenario=s, tiers=tiers, scratch_root=scratch_root)
                for s in scenarios
            }
            # One baseline per run, after its loops (both scenarios are set against it).
            cold = {Tier.HOST: baselines(files[SPIKY], "cpu")}
            if cuda:
                cold[Tier.GPU] = baselines(files[SPIKY], "cuda")
            done = []
            for name, run in runs.items():
                for tier, figures in run.figures.items():
                    per_tier[name][tier].append(with_ratios({**figures, **cold[tier]}))
                notes += [f"run {index + 1} {name}: {note}" for note in run.notes]
                preloads += [{"run": index + 1, "scenario": name, **p} for p in run.preloads]
                reached = ", ".join(
                    f"{t.label} resident {f['resident_s']:.3f} s at tick {run.ticks}"
                    for t, f in sorted(run.figures.items())
                )
                done.append(f"{name}: {reached or 'no Preload'}")
            log(
                f"run {index + 1}/{args.runs}: {'; '.join(done)}; cold load "
                f"{cold[Tier.HOST]['cold_load_s']:.3f} s ({time.perf_counter() - run_began:.1f} s)"
            )
            for name, run in runs.items():
                for note in run.notes:
                    log(f"  {name}: {note}")
        report["scenarios"] = {
            s.name: {
                "about": s.about,
                "tiers": {
                    tier.label: {"runs": runs, "summary": summary(runs) if runs else None}
                    for tier, runs in per_tier[s.name].items()
                },
            }
            for s in scenarios
        }
        report["preloads"] = preloads
        report["notes"] = notes
    finally:
        shutil.rmtree(sources, ignore_errors=True)
    report["total_s"] = time.perf_counter() - began
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="Independent runs (default 5).")
    parser.add_argument(
        "--gb-per-model",
        type=float,
        default=0.256,
        help="Size of spiky's weights in GB of 1e9 bytes (default 0.256); flat gets 1/64.",
    )
    parser.add_argument(
        "--scenario",
        choices=[*(s.name for s in SCENARIOS), "both"],
        default="both",
        help="Which planner setting to measure (default both; see the module docstring).",
    )
    parser.add_argument("--json", type=Path, help="Write all figures here as JSON.")
    args = parser.parse_args()
    if args.runs < 1 or args.gb_per_model <= 0:
        parser.error("--runs must be >= 1 and --gb-per-model > 0")
    return args


def main() -> None:
    args = parse_args()
    configure_logging("warning")
    report = measure(args)
    print(
        f"daemon loop on {report['cpus']} CPUs, spiky {report['file_bytes'][SPIKY] / GB:.3f} GB, "
        f"tick {report['tick_s']:.0f} s, spike {report['spike_in_s'] / 60:.0f} min after the "
        f"daemon's clock starts, {report['date']}"
    )
    for name, scenario in report["scenarios"].items():
        print(f"\n== scenario {name}: {scenario['about']}")
        for tier in (Tier.HOST, Tier.GPU):
            entry = scenario["tiers"].get(tier.label)
            if entry is None:
                if tier is Tier.GPU:
                    print("\nGPU: not available on this machine")
                continue
            if entry["summary"] is None:
                print(f"\n{tier.label} tier: no Preload reached it (see the notes on stderr)")
                continue
            title = f"{tier.label} tier" + (" (host shared memory)" if tier is Tier.HOST else "")
            print()
            print(table(title, entry["summary"], len(entry["runs"])))
    print(f"\ntotal {report['total_s']:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
