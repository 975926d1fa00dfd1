"""Leases end without a Release: by their time to live when renewals stop, or with their process.

The agent's monotonic clock is the test's (virtual time); the gRPC calls and the client
processes are real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc

from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.processes import own_pid_namespace
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


def _process(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def _bound_to(pid: int, **fields: object) -> pb.AttachRequest:
    return pb.AttachRequest(
        model_id=MODEL,
        max_tier=pb.TIER_HOST,
        client_pid=pid,
        client_pid_namespace=own_pid_namespace(),
        **fields,  # type: ignore[arg-type]
    )


async def test_a_lease_without_ttl_lives_until_release_while_its_process_runs(
    start_agent, config: AgentConfig, models_dir: Path
) -> None:
    clock = Clock()
    running = await _held_agent(start_agent, config, models_dir, clock)
    lease = await running.stub.Attach(_bound_to(os.getpid()))
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


async def test_a_lease_ends_when_its_process_exits(
    start_agent, config: AgentConfig, models_dir: Path
) -> None:
    running = await _held_agent(start_agent, config, models_dir, Clock())
    holders = [_process("import time; time.sleep(600)") for _ in range(2)]
    try:
        untimed = await running.stub.Attach(_bound_to(holders[0].pid, lease_only=True))
        timed = await running.stub.Attach(_bound_to(holders[1].pid, lease_ttl_s=3600))
        assert running.agent.expire_leases() == []
        assert await _attached(running.stub) == 2

        # SIGKILL, not yet reaped: a zombie holds nothing.
        holders[0].kill()
        holders[0].wait()
        holders[1].kill()
        holders[1].wait()
        assert sorted(running.agent.expire_leases()) == sorted([untimed.lease_id, timed.lease_id])
        assert await _attached(running.stub) == 0
        evicted = await running.stub.Evict(pb.EvictRequest(model_id=MODEL))
        assert evicted.bytes_freed > 0
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


async def test_a_lease_that_could_never_end_is_refused(
    start_agent, config: AgentConfig, models_dir: Path
) -> None:
    running = await _held_agent(start_agent, config, models_dir, Clock())
    exited = _process("pass")
    exited.wait()
    refused = {
        "no pid": pb.AttachRequest(model_id=MODEL, client_pid=-1),
        "another PID namespace": pb.AttachRequest(
            model_id=MODEL, client_pid=os.getpid(), client_pid_namespace="pid:[1]"
        ),
        "a pid that is not running": _bound_to(exited.pid),
    }
    for case, request in refused.items():
        details = await expect(grpc.StatusCode.INVALID_ARGUMENT, running.stub.Attach(request))
        assert "lease_ttl_s" in details or "not a running process" in details, case
    # With a TTL, a process the agent cannot see may hold a lease: the TTL ends it.
    lease = await running.stub.Attach(
        pb.AttachRequest(model_id=MODEL, client_pid=-1, lease_ttl_s=30, lease_only=True)
    )
    assert lease.lease_id
