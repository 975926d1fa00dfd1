"""A re-Preload of a held model with other weights loads them (never "already held" with the old
bytes), beside the old version while leases hold it; Attach serves the new version once loaded.
Single-file models over real gRPC (directory models: test_directories.py).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.fakes import FakeNoGpuNvml
from tests.harness.agent import (
    StartAgent,
    leftovers,
    preload_all,
    refused_preload,
    source,
    write_model,
)

DONE = pb.PreloadProgress.STAGE_DONE


def _host_request(path: Path, **kwargs: object) -> pb.PreloadRequest:
    return pb.PreloadRequest(
        model_id="m",
        weights=[source(path)],
        target_tier=pb.TIER_HOST,
        **kwargs,  # type: ignore[arg-type]
    )


def _read(path: str) -> bytes | None:
    """The bytes of the file at ``path``, or ``None`` when it is gone."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


async def _attached_bytes(stub: object, **kwargs: object) -> tuple[pb.AttachResponse, bytes]:
    lease = await stub.Attach(  # type: ignore[attr-defined]
        pb.AttachRequest(model_id="m", max_tier=pb.TIER_HOST, **{"lease_ttl_s": 600.0, **kwargs})  # type: ignore[arg-type]
    )
    assert lease.tier == pb.TIER_HOST
    (file,) = lease.files
    data = _read(file.path)
    assert data is not None
    return lease, data


def _model_files(root: Path) -> list[Path]:
    return [p for p in leftovers(root) if p.suffix == ".safetensors"]


async def test_other_weights_are_loaded_not_answered_already_held(
    start_agent: StartAgent, models_dir: Path, config: AgentConfig
) -> None:
    old, new = models_dir / "v1.safetensors", models_dir / "v2.safetensors"
    write_model(old, seed=1)
    write_model(new, seed=2)
    running = await start_agent()
    await preload_all(running.stub, _host_request(old))
    again = await preload_all(running.stub, _host_request(old))
    assert (again[-1].stage, again[-1].message) == (DONE, "already held")

    done = await preload_all(running.stub, _host_request(new))
    assert done[-1].stage == DONE
    assert done[-1].message != "already held"
    lease, data = await _attached_bytes(running.stub)
    assert data == new.read_bytes()
    await running.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    # Nothing leased the old version: it is gone from every tier at once.
    assert len(_model_files(Path(config.shm_dir))) == 1
    assert len(_model_files(Path(config.cache_dir))) == 1
    status = await running.stub.Status(pb.StatusRequest())
    assert [(m.model_id, m.tier) for m in status.models] == [("m", pb.TIER_HOST)]


async def test_a_bogus_sha256_is_checked_not_answered_already_held(
    start_agent: StartAgent, models_dir: Path, config: AgentConfig
) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, seed=1)
    running = await start_agent()
    await preload_all(running.stub, _host_request(path))
    bogus = pb.PreloadRequest(
        model_id="m",
        weights=[pb.Source(uri=path.as_uri(), sha256="a" * 64)],
        target_tier=pb.TIER_HOST,
    )
    details = await refused_preload(running.stub, bogus, grpc.StatusCode.DATA_LOSS)
    assert "checksum mismatch" in details
    # The held version is untouched and nothing of the failed one is left.
    lease, data = await _attached_bytes(running.stub)
    assert data == path.read_bytes()
    await running.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    assert len(_model_files(Path(config.shm_dir))) == 1
    assert not [p for p in leftovers(Path(config.cache_dir)) if p.suffix == ".partial"]


async def test_a_leased_version_stays_until_its_lease_ends_and_attach_serves_the_new_one(
    start_agent: StartAgent, models_dir: Path, config: AgentConfig
) -> None:
    old, new = models_dir / "v1.safetensors", models_dir / "v2.safetensors"
    write_model(old, seed=1)
    write_model(new, seed=2)
    running = await start_agent()
    await preload_all(running.stub, _host_request(old))
    old_lease, old_bytes = await _attached_bytes(running.stub, lease_ttl_s=60.0)
    assert old_bytes == old.read_bytes()

    done = await preload_all(running.stub, _host_request(new))
    assert done[-1].stage == DONE
    new_lease, new_bytes = await _attached_bytes(running.stub)
    assert new_bytes == new.read_bytes()
    # The old version is whole while its lease lives (and renewable), beside the new one.
    assert _read(old_lease.files[0].path) == old.read_bytes()
    assert len(_model_files(Path(config.shm_dir))) == 2
    assert len(_model_files(Path(config.cache_dir))) == 2
    renewed = await running.stub.RenewLease(pb.RenewLeaseRequest(lease_id=old_lease.lease_id))
    assert renewed.lease_ttl_s == 60.0
    status = await running.stub.Status(pb.StatusRequest())
    ((held, count),) = [(m.model_id, m.attached) for m in status.models]
    assert (held, count) == ("m", 1)  # the new version's lease; the old one is not a model
    (host,) = [t for t in status.tiers if t.tier == pb.TIER_HOST]
    assert host.used_bytes == old.stat().st_size + new.stat().st_size

    await running.stub.Release(pb.ReleaseRequest(lease_id=old_lease.lease_id))
    assert _read(old_lease.files[0].path) is None
    assert [p.read_bytes() for p in _model_files(Path(config.shm_dir))] == [new.read_bytes()]
    assert len(_model_files(Path(config.cache_dir))) == 1
    await running.stub.Release(pb.ReleaseRequest(lease_id=new_lease.lease_id))


async def test_preloading_a_leased_old_version_again_reinstates_it(
    start_agent: StartAgent, models_dir: Path, config: AgentConfig
) -> None:
    old, new = models_dir / "v1.safetensors", models_dir / "v2.safetensors"
    write_model(old, seed=1)
    write_model(new, seed=2)
    running = await start_agent()
    await preload_all(running.stub, _host_request(old))
    old_lease, _ = await _attached_bytes(running.stub)
    await preload_all(running.stub, _host_request(new))
    # A roll-back while pods still run the old version: no fetch, the old copy is current again.
    back = await preload_all(running.stub, _host_request(old))
    assert back[-1].stage == DONE
    assert [p.stage for p in back].count(pb.PreloadProgress.STAGE_FETCHING) == 0
    lease, data = await _attached_bytes(running.stub)
    assert data == old.read_bytes()
    assert lease.files[0].path == old_lease.files[0].path
    # The displaced new version had no lease: it is gone.
    assert [p.read_bytes() for p in _model_files(Path(config.shm_dir))] == [old.read_bytes()]
    for each in (old_lease, lease):
        await running.stub.Release(pb.ReleaseRequest(lease_id=each.lease_id))
    assert len(_model_files(Path(config.cache_dir))) == 1


async def test_a_restart_keeps_the_current_version_only(
    start_agent: StartAgent, models_dir: Path, config: AgentConfig
) -> None:
    old, new = models_dir / "v1.safetensors", models_dir / "v2.safetensors"
    write_model(old, seed=1)
    write_model(new, seed=2)
    first = await start_agent()
    await preload_all(first.stub, _host_request(old))
    await _attached_bytes(first.stub)  # never released: the agent stops with it
    await preload_all(first.stub, _host_request(new))
    first.stop.set()
    await first.channel.close()

    second = await start_agent(agent=Agent(config, nvml=FakeNoGpuNvml()))
    status = await second.stub.Status(pb.StatusRequest())
    assert [(m.model_id, m.tier) for m in status.models] == [("m", pb.TIER_DISK)]
    assert [p.read_bytes() for p in _model_files(Path(config.cache_dir))] == [new.read_bytes()]
    again = await preload_all(second.stub, _host_request(new))
    assert [p.stage for p in again].count(pb.PreloadProgress.STAGE_FETCHING) == 0
    _, data = await _attached_bytes(second.stub)
    assert data == new.read_bytes()
