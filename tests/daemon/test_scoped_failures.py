"""A history query the source refuses for good fails only the forecast stage of a tick.

Real Prometheus, a query it rejects (400 bad_data): the tick still plans and applies with the
forecasts it has (none yet, then stale ones), the problem is logged once, counted in
``prewarm_history_errors_total`` and shown in ``/readyz``'s body, and it clears once the query
works again.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from common.http_endpoints import ProbeServer
from common.ids import ModelId, PoolName
from forecaster.config import PrometheusSourceConfig
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from forecaster.types import SeriesBatch
from planner.catalog import Catalog
from planner.config import PlannerConfig
from planner.planner import PoolState
from prewarm.daemon.app import ThreadedSource
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.daemon.replay import PlannedClusterObserver
from tests.harness.prometheus import prometheus_with_history

pytestmark = [pytest.mark.prometheus]

STEP = 60.0
MODEL = ModelId("m")


class SwitchableSource:
    """The real Prometheus source, with the query a test can break and fix."""

    def __init__(self, url: str, *, start_s: float) -> None:
        self.url = url
        self.start_s = start_s
        self.broken = False

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        return await self._source().fetch(now_s=now_s)

    def _source(self) -> ThreadedSource:
        query = (
            "sum by (model) (rate(inference_requests_total[1m]"  # unbalanced: 400 bad_data
            if self.broken
            else PrometheusSourceConfig().query
        )
        config = PrometheusSourceConfig(url=self.url, step_s=int(STEP), query=query)
        return ThreadedSource(PrometheusSource(config, history_window_s=86400.0))


def test_a_refused_query_fails_only_the_forecasts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    start_s = 1_800_000_000.0
    counts = np.random.default_rng(1).poisson(30.0, (1, 600)).astype(np.float64)
    history = SeriesBatch(models=(MODEL,), start_s=start_s, step_s=STEP, counts=counts)
    with prometheus_with_history(history, tmp_path) as server:
        source = SwitchableSource(server.url, start_s=start_s)
        clock = [start_s + 600 * STEP]
        daemon: Daemon
        pools = {PoolName("gpu"): PoolState(pool=PoolName("gpu"), free_gpus=8)}
        daemon = Daemon(
            DaemonConfig(tick_s=STEP),
            source=source,
            engine=AutoForecaster(STEP),
            observer=PlannedClusterObserver(lambda: daemon.plan(), pools=pools),
            applier=None,
            catalog=Catalog(),
            planner_config=PlannerConfig(),
            horizon_s=1800,
            planning_quantile=0.9,
            step_s=STEP,
            clock=lambda: clock[0],
        )
        probes = ProbeServer(
            daemon.metrics.registry, ready=daemon.ready, detail=daemon.problems, host="127.0.0.1",
            port=0,
        )  # fmt: skip

        async def scenario() -> list[str]:
            await probes.start()
            bodies: list[str] = []
            try:
                source.broken = True
                for _ in range(3):
                    report = await daemon.tick()
                    assert report.plan is not None  # the tick went on
                    assert not report.fresh
                    clock[0] += STEP
                bodies.append(await asyncio.to_thread(_get, probes.port, "/readyz"))
                bodies.append(await asyncio.to_thread(_get, probes.port, "/metrics"))
                source.broken = False
                report = await daemon.tick()
                assert report.fresh
                bodies.append(await asyncio.to_thread(_get, probes.port, "/readyz"))
            finally:
                await probes.stop()
            return bodies

        broken_ready, metrics, fixed_ready = asyncio.run(scenario())
    assert broken_ready.startswith("ok\nhistory source refused the query: ")
    assert "bad_data" in broken_ready or "parse error" in broken_ready
    assert 'prewarm_history_errors_total{kind="InvalidInput"} 3.0' in metrics
    assert fixed_ready == "ok\n"
    # The daemon's log goes to stdout, or to logging once another test has configured it.
    log = capsys.readouterr().out + "\n".join(str(r.msg) for r in caplog.records)
    assert log.count("history source refused the query") == 1  # once, not once per tick


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        body: bytes = answer.read()
    return body.decode()
