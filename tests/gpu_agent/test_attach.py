"""Hand-off: a separate process attaches to a preloaded model without copying it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpu_agent.safetensors_format import read_layout
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.conftest import preload_all, source, write_model


def start_child(repo_root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.gpu_agent.attach_child", *args],
        cwd=repo_root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def read_json(child: subprocess.Popen[str]) -> dict[str, object]:
    assert child.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
    if not line:
        raise AssertionError(f"child exited: {child.stderr.read() if child.stderr else ''}")
    data: dict[str, object] = json.loads(line)
    return data


def expected_sums(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(t.double().sum()) for name, t in sorted(tensors.items())}


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
    child = start_child(repo_root, f"127.0.0.1:{running.port}", "m", str(pb.TIER_HOST))
    try:
        first = await read_json(child)
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
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        second = await read_json(child)
        assert second["sums"]["embed"] == 21.0  # type: ignore[index]
        assert await asyncio.to_thread(child.wait, 30) == 0
    finally:
        child.kill()
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
    child = start_child(repo_root, f"127.0.0.1:{running.port}", "m", str(pb.TIER_GPU))
    try:
        first = await read_json(child)
        assert first["tier"] == "disk"
        assert first["sums"] == pytest.approx(expected_sums(tensors))
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        await read_json(child)
        assert await asyncio.to_thread(child.wait, 30) == 0
    finally:
        child.kill()


async def test_unknown_model_falls_back_to_a_normal_load(
    start_agent, models_dir: Path, repo_root: Path
) -> None:
    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    running = await start_agent()
    child = start_child(
        repo_root, f"127.0.0.1:{running.port}", "never-preloaded", str(pb.TIER_GPU), str(path)
    )
    try:
        first = await read_json(child)
        assert first["tier"] == "fallback"
        assert first["sums"] == pytest.approx(expected_sums(tensors))
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        await read_json(child)
    finally:
        child.kill()


def test_unreachable_agent_falls_back(models_dir: Path) -> None:
    from gpu_agent.client import attach

    path = models_dir / "m.safetensors"
    tensors = write_model(path)
    model = attach("m", "127.0.0.1:1", fallback_files=[path], timeout_s=2)
    assert model.tier == "fallback"
    assert torch.equal(model.tensors["embed"], tensors["embed"])
