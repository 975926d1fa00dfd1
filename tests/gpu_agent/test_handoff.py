"""The pod side of the hand-off (gpu_agent/handoff.py) against a real agent server on 127.0.0.1:
waiting for a directory, holding a lease, and the errors that must not be waited out."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from common.errors import InvalidInput, Unauthenticated
from gpu_agent.config import AgentConfig, AuthConfig
from gpu_agent.handoff import AgentChannel, Holder, wait_for_directory
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import preload_all
from tests.harness.model_dirs import dir_sources, write_model_dir

MODEL = "org/tiny"


async def _preload(running, models_dir: Path) -> None:
    write_model_dir(models_dir / "tiny")
    await preload_all(
        running.stub,
        pb.PreloadRequest(
            model_id=MODEL, weights=dir_sources(models_dir / "tiny"), target_tier=pb.TIER_HOST
        ),
    )


async def _attached(running) -> int:
    status = await running.stub.Status(pb.StatusRequest())
    return sum(m.attached for m in status.models if m.model_id == MODEL)


async def test_wait_finds_the_directory_or_falls_back(start_agent, models_dir: Path) -> None:
    running = await start_agent()
    with AgentChannel(f"127.0.0.1:{running.port}") as channel:
        missing = await asyncio.to_thread(
            wait_for_directory, channel, MODEL, timeout_s=0.3, poll_s=0.1
        )
        assert missing.model_dir is None
        assert "not held by the agent after 0.3 s" in missing.reason
        await _preload(running, models_dir)
        found = await asyncio.to_thread(wait_for_directory, channel, MODEL, timeout_s=5)
        assert found.model_dir is not None
        assert found.model_dir.endswith(f"/models/org--tiny/{found.revision}")
        assert found.current_dir.endswith("/models/org--tiny/current")
        unmounted = await asyncio.to_thread(
            wait_for_directory, channel, MODEL, timeout_s=5, visible=lambda _p: False
        )
        assert unmounted.model_dir is None
        assert "mount the agent's shm_dir" in unmounted.reason


def test_wait_for_an_unreachable_agent_falls_back_after_the_timeout() -> None:
    with AgentChannel("127.0.0.1:1") as channel:
        result = wait_for_directory(channel, MODEL, timeout_s=0.5, poll_s=0.1)
    assert result.model_dir is None
    assert "unreachable" in result.reason


async def test_a_wrong_token_is_an_error_not_a_wait(
    start_agent, config: AgentConfig, models_dir: Path
) -> None:
    secured = config.model_copy(
        update={"auth": AuthConfig(mode="token", token=SecretStr("right-token-1234"))}
    )
    running = await start_agent(secured)
    with (
        AgentChannel(f"127.0.0.1:{running.port}", token="wrong") as channel,
        pytest.raises(Unauthenticated, match="bearer token"),
    ):
        await asyncio.to_thread(wait_for_directory, channel, MODEL, timeout_s=30)


async def test_hold_keeps_a_lease_until_stopped(start_agent, models_dir: Path) -> None:
    running = await start_agent()
    await _preload(running, models_dir)
    lines: list[str] = []
    with AgentChannel(f"127.0.0.1:{running.port}") as channel:
        holder = Holder(channel, MODEL, ttl_s=2.0, renew_s=0.2, log=lines.append)
        thread = threading.Thread(target=holder.run)
        thread.start()
        try:
            for _ in range(50):
                if await _attached(running) == 1:
                    break
                await asyncio.sleep(0.1)
            assert await _attached(running) == 1
            await asyncio.sleep(0.6)  # renewals go on
            assert await _attached(running) == 1
        finally:
            holder.stop()
            await asyncio.to_thread(thread.join, 10)
    assert await _attached(running) == 0
    assert any(line.startswith("holding org/tiny") for line in lines), lines
    assert lines[-1] == "released org/tiny"


async def test_hold_of_a_model_not_held_idles_until_stopped(start_agent) -> None:
    running = await start_agent()
    lines: list[str] = []
    with AgentChannel(f"127.0.0.1:{running.port}") as channel:
        holder = Holder(channel, MODEL, ttl_s=2.0, renew_s=0.2, log=lines.append)
        thread = threading.Thread(target=holder.run)
        thread.start()
        await asyncio.sleep(0.5)
        assert thread.is_alive()
        holder.stop()
        await asyncio.to_thread(thread.join, 10)
    assert "nothing to hold" in lines[0]


def test_bad_hold_arguments_are_refused() -> None:
    with AgentChannel("127.0.0.1:1") as channel:
        with pytest.raises(InvalidInput, match="more often than the TTL"):
            Holder(channel, MODEL, ttl_s=5, renew_s=5, log=print)
        with pytest.raises(InvalidInput, match="--model is empty"):
            Holder(channel, "", ttl_s=5, renew_s=1, log=print)
