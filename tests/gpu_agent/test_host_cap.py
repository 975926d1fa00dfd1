"""The host tier's cap: beyond ``host_max_bytes`` the agent evicts lower-valued models."""

from __future__ import annotations

from pathlib import Path

from gpu_agent.config import AgentConfig
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import preload_all, source, write_model


async def test_a_capped_host_tier_reports_its_cap_and_evicts_the_lower_valued_model(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    low, high = models_dir / "low.safetensors", models_dir / "high.safetensors"
    write_model(low, seed=1, numel=1_000_000)  # 4 MB each
    write_model(high, seed=2, numel=1_000_000)
    cap = 6_000_000  # one model fits, not two
    running = await start_agent(config.model_copy(update={"host_max_bytes": cap}))
    status = await running.stub.Status(pb.StatusRequest())
    host = next(t for t in status.tiers if t.tier == pb.TIER_HOST)
    assert host.capacity_bytes <= cap
    await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="low", weights=[source(low)], target_tier=pb.TIER_HOST,
                          predicted_value=1.0),
    )  # fmt: skip
    done = await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="high", weights=[source(high)], target_tier=pb.TIER_HOST,
                          predicted_value=100.0),
    )  # fmt: skip
    assert done[-1].stage == pb.PreloadProgress.STAGE_DONE
    held = {m.model_id: m.tier for m in (await running.stub.Status(pb.StatusRequest())).models}
    assert held.get("high") == pb.TIER_HOST
    assert held.get("low") != pb.TIER_HOST  # evicted from host memory (kept on disk at most)
    host = next(
        t for t in (await running.stub.Status(pb.StatusRequest())).tiers if t.tier == pb.TIER_HOST
    )
    assert host.used_bytes <= cap
