"""Leases with a time to live: renewed by their holder, ended by the agent when renewals stop.

The agent's monotonic clock is the test's (virtual time); the gRPC calls are real.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.fakes import FakeNoGpuNvml
from tests.harness.agent import expect, preload_all
from tests.harness.model_dirs import dir_sources, write_model_dir

MODEL = "tiny"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _held_agent(start_agent, config: AgentConfig, models_dir: Path, clock: Clock):
    write_model_dir(models_dir / "tiny")
    agent = Agent(config, nvml=FakeNoGpuNvml(), monotonic=clock)
    running = await start_agent(agent=agent)
    await preload_all(
        running.stub,
        pb.PreloadRequest(
            model_id=MODEL, weights=dir_sources(models_dir / "tiny"), target_tier=pb.TIER_HOST
        ),
    )
    return running


async def _attached(stub) -> int:
    status = await stub.Status(pb.StatusRequest())
    return next(m.attached for m in status.models if m.model_id == MODEL)


async def test_a_lease_that_is_not_renewed_expires_and_the_model_becomes_evictable(
    start_agent, config: AgentConfig, models_dir: Path
) -> None:
    clock = Clock()
    running = await _held_agent(start_agent, config, models_dir, clock)
    lease = await running.stub.Attach(
        pb.AttachRequest(model_id=MODEL, max_tier=pb.TIER_HOST, lease_ttl_s=10, lease_only=True)
    )
    assert await _attached(running.stub) == 1

    # Renewed in time: it lives on past its first TTL.
    clock.now += 8
    renewed = await running.stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id))
    assert renewed.lease_ttl_s == 10
    clock.now += 8
    assert running.agent.expire_leases() == []
    assert await _attached(running.stub) == 1
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION, running.stub.Evict(pb.EvictRequest(model_id=MODEL))
    )

    # Renewals stop (the holder crashed): the lease ends after its TTL.
    clock.now += 10.5
    assert running.agent.expire_leases() == [lease.lease_id]
    assert await _attached(running.stub) == 0
    details = await expect(
        grpc.StatusCode.NOT_FOUND,
        running.stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id)),
    )
    assert "attach again" in details
    evicted = await running.stub.Evict(pb.EvictRequest(model_id=MODEL))
    assert evicted.bytes_freed > 0


async def test_a_lease_without_ttl_lives_until_release(
    start_agent, config: AgentConfig, models_dir: Path
) -> None:
    clock = Clock()
    running = await _held_agent(start_agent, config, models_dir, clock)
    lease = await running.stub.Attach(pb.AttachRequest(model_id=MODEL, max_tier=pb.TIER_HOST))
    assert lease.tensors  # a full Attach still describes the tensors
    clock.now += 10**6
    assert running.agent.expire_leases() == []
    renewed = await running.stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id))
    assert renewed.lease_ttl_s == 0
    await running.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    assert await _attached(running.stub) == 0


async def test_bad_ttls_are_refused(start_agent, config: AgentConfig, models_dir: Path) -> None:
    running = await _held_agent(start_agent, config, models_dir, Clock())
    for ttl in (-1.0, 10.0**9):
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            running.stub.Attach(pb.AttachRequest(model_id=MODEL, lease_ttl_s=ttl)),
        )
