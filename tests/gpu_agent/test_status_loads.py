"""Status reports each model's latest load (duration, from and to which tier, when, bytes): what the
daemon learns weight-load lead times from."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.harness.agent import StartAgent, preload_all, source


async def holding(stub: pb_grpc.GpuAgentStub, model_id: str) -> pb.ModelHolding:
    status: pb.StatusResponse = await stub.Status(pb.StatusRequest())
    (found,) = [m for m in status.models if m.model_id == model_id]
    return found


@pytest.fixture
def model_size(model_file: Path) -> int:
    return model_file.stat().st_size


async def test_status_reports_the_latest_load_once_per_load(
    start_agent: StartAgent, model_file: Path, model_size: int
) -> None:
    running = await start_agent()
    stub = running.stub

    await preload_all(stub, pb.PreloadRequest(model_id="m", weights=[source(model_file)],
                                              target_tier=pb.TIER_DISK))  # fmt: skip
    fetched = await holding(stub, "m")
    assert fetched.loaded_from == pb.TIER_UNSPECIFIED  # from its source
    assert fetched.loaded_to == pb.TIER_DISK
    assert fetched.load_duration_s > 0
    assert fetched.loaded_bytes == model_size
    assert (await holding(stub, "m")).loaded_at == fetched.loaded_at  # the same instant each time

    await preload_all(stub, pb.PreloadRequest(model_id="m", target_tier=pb.TIER_HOST))
    lifted = await holding(stub, "m")
    assert (lifted.loaded_from, lifted.loaded_to) == (pb.TIER_DISK, pb.TIER_HOST)
    assert lifted.loaded_at.ToNanoseconds() > fetched.loaded_at.ToNanoseconds()
    assert lifted.load_duration_s > 0

    # Already held: nothing moved, so the load on record stays the one that did.
    done = await preload_all(stub, pb.PreloadRequest(model_id="m", target_tier=pb.TIER_HOST))
    assert done[-1].message == "already held"
    assert (await holding(stub, "m")).loaded_at == lifted.loaded_at
