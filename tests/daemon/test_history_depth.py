"""History shorter than the window, and a query whose series lack the model label, in the daemon.

Real Prometheus holding 2 days of history, a 3-day window (as kube-prometheus-stack's 10-day
retention is to the default 14-day window): the daemon forecasts from what exists and says so once
in the log, in ``prewarm_history_seconds`` and in ``/readyz``. A second query without the model
label is one scoped problem: counted in ``prewarm_history_errors_total`` and shown in ``/readyz``
while the first query's models are forecast.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest

from common.http_endpoints import ProbeServer
from common.ids import ModelId, PoolName
from forecaster.config import PrometheusSourceConfig
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from planner.catalog import Catalog
from planner.config import PlannerConfig
from planner.planner import PoolState
from prewarm.daemon.app import ThreadedSource
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.daemon.replay import PlannedClusterObserver
from tests.forecaster.conftest import synthetic_batch
from tests.harness.prometheus import prometheus_with_history

pytestmark = [pytest.mark.prometheus, pytest.mark.acceptance_fleet]

STEP = 60.0
EXACT = "sum by (model) (inference_requests_total - inference_requests_total offset 1m) / 60"
UNLABELLED = "sum(rate(inference_requests_total[5m]))"


def test_short_history_and_an_unlabelled_query_are_reported_while_forecasts_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    batch = synthetic_batch(models=2, days=2.0, seed=7)
    with prometheus_with_history(batch, tmp_path) as server:
        config = PrometheusSourceConfig.model_validate(
            {
                "url": server.url,
                "step_s": int(STEP),
                "retries": 0,
                "queries": [
                    {"preset": "custom", "query": EXACT},
                    {"preset": "custom", "query": UNLABELLED},
                ],
            }
        )
        source = PrometheusSource(config, history_window_s=3 * 86400.0)
        clock = [batch.end_s]
        daemon: Daemon
        pools = {PoolName("gpu"): PoolState(pool=PoolName("gpu"), free_gpus=8)}
        daemon = Daemon(
            DaemonConfig(tick_s=STEP),
            source=ThreadedSource(source),
            engine=AutoForecaster(STEP),
            observer=PlannedClusterObserver(lambda: daemon.plan(), pools=pools),
            applier=None,
            catalog=Catalog(),
            planner_config=PlannerConfig(),
            horizon_s=1800,
            planning_quantile=0.9,
            step_s=STEP,
            source_report=source.report,
            clock=lambda: clock[0],
        )
        probes = ProbeServer(
            daemon.metrics.registry, ready=daemon.ready, detail=daemon.problems, host="127.0.0.1",
            port=0,
        )  # fmt: skip

        async def scenario() -> tuple[str, str]:
            await probes.start()
            try:
                for _ in range(2):
                    report = await daemon.tick()
                    assert report.fresh  # the poll succeeded: the scoped issue did not fail it
                    clock[0] += STEP
                ready = await asyncio.to_thread(_get, probes.port, "/readyz")
                metrics = await asyncio.to_thread(_get, probes.port, "/metrics")
            finally:
                await probes.stop()
            return ready, metrics

        ready, metrics = asyncio.run(scenario())
        assert set(daemon.forecasts()) == {ModelId("model-0"), ModelId("model-1")}

    assert ready.startswith("ok\n")
    assert "history: the source holds 2.0 d of the 3.0 d window" in ready
    assert "history query skipped in part" in ready
    assert "without the label 'model'" in ready
    assert UNLABELLED in ready
    assert 'prewarm_history_errors_total{kind="InvalidInput"} 2.0' in metrics
    assert "prewarm_history_window_seconds 259200.0" in metrics
    depth = re.search(r'prewarm_history_seconds\{model="model-0"\} (\S+)', metrics)
    assert depth is not None
    # Two days backfilled, plus the minute the second tick added.
    assert float(depth.group(1)) == pytest.approx(2 * 86400 + STEP, abs=STEP)
    log = capsys.readouterr().out + "\n".join(str(r.msg) for r in caplog.records)
    assert log.count("forecasting with what exists") == 1  # once, not once per tick
    assert log.count("history query skipped in part") == 1


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        body: bytes = answer.read()
    return body.decode()
