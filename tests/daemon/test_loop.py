"""The daemon tick against the real forecaster and planner, with a replayed history source."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from common.errors import TemporaryError
from common.ids import ModelId, PoolName
from forecaster.engine import AutoForecaster
from forecaster.types import SeriesBatch
from planner.catalog import Catalog
from planner.config import PlannerConfig
from planner.planner import PoolState
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.daemon.replay import PlannedClusterObserver, ReplaySource

STEP = 60.0
DAY = 1440
BUSY, IDLE = ModelId("busy"), ModelId("idle")


def _history(days: int = 3) -> SeriesBatch:
    minutes = np.arange(days * DAY)
    daily = 50 + 40 * np.sin(2 * np.pi * minutes / DAY)
    rng = np.random.default_rng(0)
    busy = rng.poisson(daily).astype(np.float64)
    idle = np.zeros_like(busy)
    idle[::720] = 1.0
    return SeriesBatch(
        models=(BUSY, IDLE), start_s=0.0, step_s=STEP, counts=np.vstack([busy, idle])
    )


def _timer_history(days: int = 2) -> SeriesBatch:
    counts = np.zeros((1, days * DAY))
    counts[0, ::10] = 1.0
    return SeriesBatch(models=(ModelId("timer"),), start_s=0.0, step_s=STEP, counts=counts)


class FlakySource:
    """Wraps a source and fails on demand (a Prometheus outage)."""

    def __init__(self, inner: ReplaySource) -> None:
        self.inner = inner
        self.down = False

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        if self.down:
            raise TemporaryError("prometheus: connection refused")
        return await self.inner.fetch(now_s=now_s)


def _daemon(source: object, clock: list[float], config: DaemonConfig | None = None) -> Daemon:
    daemon: Daemon
    pools = {PoolName("gpu"): PoolState(pool=PoolName("gpu"), free_gpus=8)}
    observer = PlannedClusterObserver(lambda: daemon.plan(), pools=pools)
    daemon = Daemon(
        config or DaemonConfig(tick_s=60.0),
        source=source,  # type: ignore[arg-type]
        engine=AutoForecaster(STEP),
        observer=observer,
        applier=None,
        catalog=Catalog(),
        planner_config=PlannerConfig(),
        horizon_s=1800,
        planning_quantile=0.9,
        step_s=STEP,
        clock=lambda: clock[0],
    )
    return daemon


async def test_tick_forecasts_plans_and_publishes() -> None:
    clock = [2 * DAY * STEP]
    daemon = _daemon(ReplaySource(_history()), clock)
    report = await daemon.tick()
    assert report.fresh
    assert report.plan is not None
    assert set(daemon.forecasts()) == {BUSY, IDLE}
    busy = daemon.forecasts()[BUSY]
    assert busy.horizon == 30
    assert not busy.stale
    assert daemon.ready()
    floors = {a.model: a.min_replicas for a in report.plan.actions if hasattr(a, "min_replicas")}
    assert floors.get(BUSY, 0) >= 1  # observed traffic: the reactive floor holds
    text = _metrics_text(daemon)
    assert 'prewarm_forecast_rps{horizon="15m",model="busy",quantile="0.9"}' in text
    assert "prewarm_observed_rps" in text


async def test_source_outage_keeps_stale_forecasts_and_still_plans() -> None:
    clock = [2 * DAY * STEP]
    source = FlakySource(ReplaySource(_history()))
    daemon = _daemon(source, clock)
    await daemon.tick()
    source.down = True
    clock[0] += STEP
    report = await daemon.tick()
    assert not report.fresh
    assert report.plan is not None
    assert all(f.stale for f in daemon.forecasts().values())
    assert all(np.isfinite(f.mean).all() for f in daemon.forecasts().values())
    assert 'prewarm_forecast_stale{model="busy"} 1.0' in _metrics_text(daemon)
    source.down = False
    clock[0] += STEP
    assert (await daemon.tick()).fresh
    assert not any(f.stale for f in daemon.forecasts().values())


async def test_run_stops_on_event_within_grace() -> None:
    clock = [2 * DAY * STEP]
    daemon = _daemon(ReplaySource(_history()), clock)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    for _ in range(200):
        if daemon.ready():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=daemon.config.shutdown_grace_s + 5)
    assert daemon.ready()


def _metrics_text(daemon: Daemon) -> str:
    from prometheus_client import generate_latest

    return generate_latest(daemon.metrics.registry).decode()


@pytest.fixture(autouse=True)
def _quiet_numpy() -> None:
    np.seterr(all="ignore")


async def test_the_planner_gets_the_idle_time_record_of_a_timer() -> None:
    # A function called every 10 minutes, 7 minutes after its last call: the planning window
    # (one tick plus the default lead time, 3 minutes) reaches its next call. Its own record of
    # gaps says so (the forecast alone gives about 0.01 here); 2 minutes after, it says not yet.
    timer = ModelId("timer")
    history = _timer_history(days=1)
    last_end = (DAY - 10 + 1) * STEP
    clock = [last_end + 7 * STEP]
    daemon = _daemon(ReplaySource(history), clock)
    await daemon.tick()
    clock_early = [last_end + 2 * STEP]
    early = _daemon(ReplaySource(history), clock_early)
    await early.tick()
    assert daemon.model_plans()[timer].p_window > 0.75
    assert early.model_plans()[timer].p_window < 0.05


def _avoided(daemon: Daemon, model: ModelId) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "prewarm_cold_starts_avoided_total", {"model": model}
    )
    return 0.0 if value is None else value


@pytest.mark.parametrize(("cooldown_s", "avoided"), [(300.0, 1.0), (600.0, 0.0)])
async def test_a_warm_request_after_a_silence_longer_than_the_cooldown_is_a_cold_start_avoided(
    cooldown_s: float, avoided: float
) -> None:
    # A timer every 10 minutes: 9 silent minutes (540 s) before each call. The first tick, 7
    # minutes after a call, holds it; the next call finds that replica. The reactive autoscaler
    # would have scaled to zero after a 300 s cooldown (a cold start avoided), not after 600 s.
    timer = ModelId("timer")
    clock = [(DAY + 8) * STEP]
    config = DaemonConfig(tick_s=60.0, autoscaler_cooldown_s=cooldown_s)
    daemon = _daemon(ReplaySource(_timer_history()), clock, config)
    await daemon.tick()
    assert daemon.model_plans()[timer].hold_gpu
    clock[0] = (DAY + 11) * STEP
    await daemon.tick()
    assert _avoided(daemon, timer) == avoided


async def test_requests_are_counted_once_per_step_when_ticks_come_more_often() -> None:
    # Ticks every 15 s over 60 s steps: the second tick sees no new step and counts nothing.
    clock = [2 * DAY * STEP]
    daemon = _daemon(ReplaySource(_history()), clock)
    await daemon.tick()
    registry = daemon.metrics.registry

    def counted() -> float:
        return sum(
            registry.get_sample_value(name, {"model": BUSY}) or 0.0
            for name in ("prewarm_requests_warm_total", "prewarm_requests_cold_total")
        )

    once = counted()
    last_step = _history().counts[0, 2 * DAY - 1]
    assert once == pytest.approx(last_step)
    clock[0] += 15.0
    await daemon.tick()
    assert counted() == pytest.approx(once)
