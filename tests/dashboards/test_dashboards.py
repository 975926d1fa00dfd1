"""Every Grafana panel's PromQL, against a real Prometheus scraping a running daemon and agent.

The daemon runs in this process (replayed history, no cluster: cluster actions dry, GPU-agent
actions real); the agent is a real ``prewarm agent`` process loading small generated models into
host memory. Each query must parse and return data. Panels that compare with ``offset 15m`` are
also evaluated 15 minutes ahead (with a 20-minute lookback) so that "15 minutes ago" is now. The
static pages of ``prewarm dashboards render`` are drawn from the same Prometheus.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from actuator.agents import AgentActuator
from actuator.config import ActuatorConfig
from common.errors import NotFound
from common.http_endpoints import ProbeServer
from common.ids import ModelId, NodeName, PoolName
from dashboards.build import all_dashboards, render
from forecaster.engine import AutoForecaster
from forecaster.types import SeriesBatch
from gpu_agent.agent import Agent
from gpu_agent.client import attach
from gpu_agent.config import AgentConfig, AuthConfig
from gpu_agent.server import serve
from planner.actions import Evict, Preload, Tier
from planner.catalog import parse_catalog
from planner.config import PlannerConfig
from planner.planner import PoolState
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.loop import Daemon
from prewarm.daemon.replay import PlannedClusterObserver, ReplaySource
from prewarm.dashboards.render import render_report
from prewarm.demo.applier import AgentOnlyApplier
from prewarm.demo.models import write_model
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.fakes import FakeNvml
from tests.harness.k8s import free_port
from tests.harness.prometheus_scrape import scraping_prometheus

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
STEP = 60.0
MODELS = (ModelId("chat-small"), ModelId("chat-large"))


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    for name, document in all_dashboards().items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == render(document), (
            f"dashboards/{name} is stale: run `.venv/bin/python dashboards/build.py`"
        )


def _queries() -> list[tuple[str, str, str]]:
    found = []
    for name, document in all_dashboards().items():
        for panel in document["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$model", ".*")
                found.append((name, panel["title"], expr))
    return found


def _history(end_s: float) -> SeriesBatch:
    minutes = np.arange(3 * 1440)
    rng = np.random.default_rng(3)
    busy = rng.poisson(30 + 25 * np.sin(2 * np.pi * minutes / 1440)).astype(np.float64)
    sparse = (rng.random(minutes.size) < 0.05).astype(np.float64)
    start_s = (end_s // STEP) * STEP - minutes.size * STEP
    counts = np.vstack([busy, sparse])
    return SeriesBatch(models=MODELS, start_s=start_s, step_s=STEP, counts=counts)


def _agent_config(tmp_path: Path, models: Path) -> AgentConfig:
    return AgentConfig(
        listen="127.0.0.1:0",
        metrics_port=free_port(),
        cache_dir=str(tmp_path / "cache"),
        shm_dir=str(tmp_path / "shm"),
        allowed_file_roots=[str(models)],
        host_headroom_bytes=0,
        disk_headroom_bytes=0,
        shutdown_grace_s=0.5,
        auth=AuthConfig(mode="none"),  # 127.0.0.1 only
    )


@pytest.mark.prometheus
@pytest.mark.slow
def test_every_panel_query_parses_and_returns_data(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    catalog_yaml = {"models": {}}
    weights: dict[ModelId, pb.Source] = {}
    for model, gb in zip(MODELS, (8.0, 30.0), strict=True):
        path = write_model(models_dir, model, weights_gb=gb, bytes_per_gb=64 * 1024)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        weights[model] = pb.Source(uri=f"file://{path}", sha256=digest)
        catalog_yaml["models"][model] = {
            "weights_gb": gb, "image": "example/serve:1", "image_gb": 4, "replica_rps": 2,
            "compile_s": 20, "node_pool": "demo",
        }  # fmt: skip
    catalog = parse_catalog(json.dumps(catalog_yaml))
    asyncio.run(_run(tmp_path, catalog, weights, _agent_config(tmp_path, models_dir)))


async def _run(
    tmp_path: Path, catalog: object, weights: dict[ModelId, pb.Source], config: AgentConfig
) -> None:
    # The agent is real; only NVML is a fake (no GPU driver on this machine): one 80 GB GPU.
    agent = Agent(config, nvml=FakeNvml(80 * 1024**3))
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop_agent = asyncio.Event()
    serving = asyncio.create_task(
        serve(config, agent=agent, stop=stop_agent, on_ready=ready.set_result, handle_signals=False)
    )
    agent_port = await asyncio.wait_for(ready, 30)
    agent_metrics_port = config.metrics_port
    agents = AgentActuator(
        ActuatorConfig(),
        address_of=lambda node: _address(agent_port),
        weights_of=lambda model: [weights[model]],
    )
    # The test clock starts at the wall clock: the agent checks preload deadlines against it.
    clock = [time.time()]
    daemon: Daemon
    pools = {PoolName("demo"): PoolState(pool=PoolName("demo"), free_gpus=4)}
    daemon = Daemon(
        DaemonConfig(mode="active", tick_s=STEP),
        source=ReplaySource(_history(time.time())),
        engine=AutoForecaster(STEP),
        observer=PlannedClusterObserver(lambda: daemon.plan(), pools=pools),
        applier=AgentOnlyApplier(agents),
        catalog=catalog,  # type: ignore[arg-type]
        planner_config=PlannerConfig(),
        horizon_s=1800,
        planning_quantile=0.9,
        step_s=STEP,
        clock=lambda: clock[0],
    )
    probes = ProbeServer(daemon.metrics.registry, host="127.0.0.1", port=0)
    await probes.start()
    targets = [f"127.0.0.1:{probes.port}", f"127.0.0.1:{agent_metrics_port}"]
    try:
        with scraping_prometheus(targets, tmp_path / "prometheus", lookback_s=1200) as prom:
            started = time.monotonic()
            while time.monotonic() - started < 8:  # ticks across several 1 s scrapes
                await daemon.tick()
                clock[0] += STEP
                await asyncio.sleep(0.2)
            # A host-tier load and an eviction of our own, so the agent panels have series even
            # when the plan has not needed either yet.
            loaded = await agents.preload(_preload(MODELS[1]), now_s=time.time())
            assert loaded.ok, loaded.detail
            # An inference process attaching to the held copy (a hit), then to one not held
            # (a miss: it would load the weights itself).
            held = await asyncio.to_thread(
                attach, str(MODELS[1]), f"127.0.0.1:{agent_port}", max_tier=Tier.HOST
            )
            assert held.tier == "host"
            await asyncio.to_thread(held.release)  # the agent serves on this event loop
            with pytest.raises(NotFound):
                await asyncio.to_thread(
                    attach, "never-preloaded", f"127.0.0.1:{agent_port}", max_tier=Tier.HOST
                )
            evicted = await agents.evict(_evict(MODELS[1]))
            assert evicted.ok, evicted.detail
            await asyncio.sleep(3)
            now = time.time()
            empty = []
            for name, title, expr in _queries():
                answers = [prom.query(expr), prom.query(expr, at_s=now + 900)]
                for answer in answers:
                    assert answer["status"] == "success", (name, title, expr, answer)
                if not any(answer["data"]["result"] for answer in answers):
                    empty.append(f"{name}: {title}: {expr}")
            assert not empty, "queries without data:\n" + "\n".join(empty)
            # The same panels drawn as static pages (``prewarm dashboards render``) over the
            # last two minutes at the 1 s scrape interval: every panel has drawn series.
            report = await asyncio.to_thread(
                render_report, prom.url, tmp_path / "html", range_s=120, step_s=1
            )
            assert not report.failed, [str(failure) for failure in report.failed]
            assert not report.empty, report.empty
            for page in report.pages:
                sections = page.read_text(encoding="utf-8").split('<section class="panel"')[1:]
                assert sections, page
                assert all('class="series"' in section for section in sections), page
    finally:
        await probes.stop()
        await agents.close()
        stop_agent.set()
        await asyncio.wait_for(serving, 30)


async def _address(port: int) -> str:
    return f"127.0.0.1:{port}"


def _evict(model: ModelId) -> Evict:
    return Evict(model=model, node=NodeName("local"), tier=Tier.HOST, reason="test", value=0.0)


def _preload(model: ModelId) -> Preload:
    return Preload(
        model=model, node=NodeName("local"), tier=Tier.HOST, bytes=1, deadline_s=time.time() + 60,
        value_per_byte=1.0, reason="test", value=1.0,
    )  # fmt: skip
