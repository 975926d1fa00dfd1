"""Hand-off: a separate process attaches to a preloaded model without copying it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.tiers import Tier
from gpu_agent.safetensors_format import read_layout
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import (
    attach_child,
    expected_sums,
    preload_all,
    source,
    write_model,
)


async def test_host_tier_attach_maps_shared_memory_without_copying(
    start_agent, models_dir: Path, config, repo_root: Path
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    running = await start_agent()
    await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="m", weights=[source(path)], target_tier=pb.TIER_HOST),
    )
    with attach_child(repo_root, running, "m", Tier.HOST) as child:
        first = await child.report()
        assert first["tier"] == "host"
        assert first["sums"] == pytest.approx(expected_sums(tensors))
        status = await running.stub.Status(pb.StatusRequest())
        assert status.models[0].attached == 1
        # Zero-copy: the child's tensor is the shared-memory page. Change the bytes of "embed" in
        # the agent's shm file; the child (which has not written to it) sees the new values.
        (shm_file,) = (Path(config.shm_dir)).rglob("*.safetensors")  # noqa: ASYNC240
        layout = read_layout(shm_file)
        embed = next(t for t in layout.tensors if t.name == "embed")
        with shm_file.open("r+b") as handle:
            handle.seek(layout.data_start + embed.begin)
            handle.write(torch.ones(7 * 3, dtype=torch.int64).numpy().tobytes())
        child.poke()
        second = await child.report()
        assert second["sums"]["embed"] == 21.0  # type: ignore[index]
        assert await child.exit_code() == 0
    status = await running.stub.Status(pb.StatusRequest())
    assert status.models[0].attached == 0


async def test_disk_tier_attach_loads_normally(
    start_agent, models_dir: Path, repo_root: Path
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    running = await start_agent()
    await preload_all(
        running.stub,
        pb.PreloadRequest(model_id="m", weights=[source(path)], target_tier=pb.TIER_DISK),
    )
    with attach_child(repo_root, running, "m", Tier.GPU) as child:
        first = await child.report()
        assert first["tier"] == "disk"
        assert first["sums"] == pytest.approx(expected_sums(tensors))
        child.poke()
        await child.report()
        assert await child.exit_code() == 0


async def test_unknown_model_falls_back_to_a_normal_load(
    start_agent, models_dir: Path, repo_root: Path
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    running = await start_agent()
    with attach_child(repo_root, running, "never-preloaded", Tier.GPU, path) as child:
        first = await child.report()
        assert first["tier"] == "fallback"
        assert first["sums"] == pytest.approx(expected_sums(tensors))
        child.poke()
        await child.report()


def test_unreachable_agent_falls_back(models_dir: Path) -> None:
    from gpu_agent.client import attach

    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    model = attach("m", "127.0.0.1:1", fallback_files=[path], timeout_s=2)
    assert model.tier == "fallback"
    assert torch.equal(model.tensors["embed"], tensors["embed"])
