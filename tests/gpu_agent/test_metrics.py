"""The agent's /metrics: what is held per tier, loads and evictions, over a real preload/evict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest

from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.metrics import AgentMetrics, eviction_reason
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.fakes import FakeNoGpuNvml
from tests.harness.agent import preload_all, source, write_model


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in metrics:\n{text}")


async def test_metrics_follow_preload_and_evict(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    path = models_dir / "m.safetensors"
    write_model(path)
    agent = Agent(config, nvml=FakeNoGpuNvml())
    metrics = AgentMetrics(agent)
    running = await start_agent(agent=agent)
    await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="org/m", weights=[source(path)], predicted_value=1.0),
    )
    text = generate_latest(metrics.registry).decode()
    size = path.stat().st_size
    assert _value(text, 'prewarm_agent_held_bytes{tier="host"}') == size
    assert _value(text, 'prewarm_agent_held_models{tier="host"}') == 1
    assert _value(text, 'prewarm_agent_loaded_bytes_total{tier="host"}') >= size
    assert _value(text, "prewarm_agent_gpu_available") == 0
    await running.stub.Evict(pb.EvictRequest(model_id="org/m", tier=pb.TIER_HOST))
    text = generate_latest(metrics.registry).decode()
    assert _value(text, 'prewarm_agent_held_bytes{tier="host"}') == 0
    assert _value(text, 'prewarm_agent_evictions_total{reason="requested",tier="host"}') == 1


def test_eviction_reasons_are_a_small_fixed_set() -> None:
    assert eviction_reason("Evict") == "requested"
    assert eviction_reason("memory pressure from other processes") == "pressure"
    assert eviction_reason("GPU memory needed for a preload") == "preload"
    assert eviction_reason("something new") == "other"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_metrics_with_real_nvml_and_a_gpu_preload(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    from gpu_agent.nvml import PynvmlNvml

    path = models_dir / "m.safetensors"
    write_model(path, numel=3_000_000)
    agent = Agent(config, nvml=PynvmlNvml())
    metrics = AgentMetrics(agent)
    running = await start_agent(agent=agent)
    await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="m", weights=[source(path)], predicted_value=1.0),
    )
    text = generate_latest(metrics.registry).decode()
    assert _value(text, 'prewarm_agent_held_bytes{tier="gpu"}') > 0
    assert _value(text, "prewarm_agent_gpu_available") == 1
    gpu_lines = [line for line in text.splitlines() if line.startswith("prewarm_agent_gpu_free")]
    assert gpu_lines
    assert all(float(line.split()[-1]) > 0 for line in gpu_lines)
    assert _value(text, 'prewarm_agent_loaded_bytes_total{tier="gpu"}') > 0
