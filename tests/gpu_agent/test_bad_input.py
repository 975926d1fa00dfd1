"""Bad input gets the right gRPC status and leaves no partial file or allocation behind."""

from __future__ import annotations

import asyncio
import io
import pickle
import time
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.timestamp_pb2 import Timestamp

from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.httpserver import serve_files
from tests.harness.agent import (
    assert_clean,
    expect,
    leftovers,
    preload_all,
    refused_preload,
    sha256,
    source,
    write_model,
)

CODE = grpc.StatusCode


@pytest.mark.parametrize(
    ("model_id", "why"),
    [
        ("", "empty"),
        ("x" * 257, "at most 256"),
        ("a b", "only letters"),
        ("m\x00", "only letters"),
        ("x" * 100_000, "at most 256"),
    ],
)
async def test_bad_model_ids(start_agent, model_file: Path, config, model_id: str, why: str):
    running = await start_agent()
    request = pb.PreloadRequest(model_id=model_id, weights=[source(model_file)])
    assert why in await refused_preload(running.stub, request, CODE.INVALID_ARGUMENT)
    await expect(CODE.INVALID_ARGUMENT, running.stub.Evict(pb.EvictRequest(model_id=model_id)))
    await expect(CODE.INVALID_ARGUMENT, running.stub.Attach(pb.AttachRequest(model_id=model_id)))
    assert_clean(config)


async def test_unknown_model(start_agent) -> None:
    running = await start_agent()
    await expect(CODE.NOT_FOUND, running.stub.Evict(pb.EvictRequest(model_id="nope")))
    await expect(CODE.NOT_FOUND, running.stub.Attach(pb.AttachRequest(model_id="nope")))
    await expect(CODE.NOT_FOUND, running.stub.Release(pb.ReleaseRequest(lease_id="nope")))


async def test_missing_source_file_is_not_found(start_agent, models_dir: Path, config) -> None:
    running = await start_agent()
    request = pb.PreloadRequest(
        model_id="m", weights=[pb.Source(uri=(models_dir / "no.safetensors").as_uri(),
                                         sha256="0" * 64)])  # fmt: skip
    await refused_preload(running.stub, request, CODE.NOT_FOUND, clean=config)


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("file:///etc/passwd", CODE.PERMISSION_DENIED),
        ("ftp://example.com/m.safetensors", CODE.PERMISSION_DENIED),
        ("https://example.com/m.safetensors", CODE.PERMISSION_DENIED),
        ("http://evil.example:80/m.safetensors", CODE.PERMISSION_DENIED),
        ("{models}/../../etc/passwd", CODE.PERMISSION_DENIED),
        ("{models}/%2e%2e/secret.safetensors", CODE.PERMISSION_DENIED),
        ("not a uri", CODE.INVALID_ARGUMENT),
        ("file://host/models/m.safetensors", CODE.INVALID_ARGUMENT),
    ],
)
async def test_uris_outside_policy(
    start_agent, models_dir: Path, config, uri: str, code: grpc.StatusCode
) -> None:
    (models_dir.parent / "secret.safetensors").write_bytes(b"x")
    running = await start_agent()
    uri = uri.replace("{models}", models_dir.as_uri())
    request = pb.PreloadRequest(model_id="m", weights=[pb.Source(uri=uri, sha256="0" * 64)])
    await refused_preload(running.stub, request, code, clean=config)


async def test_symlink_out_of_root_is_denied(start_agent, models_dir: Path, config) -> None:
    outside = models_dir.parent / "outside.safetensors"
    write_model(outside)
    (models_dir / "link.safetensors").symlink_to(outside)
    running = await start_agent()
    request = pb.PreloadRequest(model_id="m", weights=[source(models_dir / "link.safetensors")])
    await refused_preload(running.stub, request, CODE.PERMISSION_DENIED)


@pytest.mark.parametrize("sha", ["", "abc", "g" * 64])
async def test_bad_or_missing_sha256(start_agent, model_file: Path, sha: str) -> None:
    running = await start_agent()
    weights = [pb.Source(uri=model_file.as_uri(), sha256=sha)]
    request = pb.PreloadRequest(model_id="m", weights=weights)
    await refused_preload(running.stub, request, CODE.INVALID_ARGUMENT)


async def test_checksum_mismatch_is_data_loss(start_agent, model_file: Path, config) -> None:
    running = await start_agent()
    weights = [pb.Source(uri=model_file.as_uri(), sha256="a" * 64)]
    request = pb.PreloadRequest(model_id="m", weights=weights)
    details = await refused_preload(running.stub, request, CODE.DATA_LOSS, clean=config)
    assert "checksum mismatch" in details
    status = await running.stub.Status(pb.StatusRequest())
    assert list(status.models) == []


async def test_http_checksum_mismatch_is_data_loss(start_agent, models_dir: Path, config):
    path = models_dir / "m.safetensors"
    write_model(path, numel=500_000)
    running = await start_agent()
    with serve_files(models_dir) as (base, _):
        request = pb.PreloadRequest(
            model_id="m", weights=[pb.Source(uri=base + path.name, sha256="b" * 64)]
        )
        await refused_preload(running.stub, request, CODE.DATA_LOSS)
    assert_clean(config)


@pytest.mark.parametrize("damage", ["truncate", "header", "length", "trailing"])
async def test_truncated_or_corrupt_safetensors(
    start_agent, models_dir: Path, config, damage: str
) -> None:
    path = models_dir / "m.safetensors"
    write_model(path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[:-100]
    elif damage == "header":
        data = data[:8] + b"{not json" + data[17:]
    elif damage == "length":
        data = (10**12).to_bytes(8, "little") + data[8:]
    else:
        data = data + b"\x00" * 16
    path.write_bytes(data)
    running = await start_agent()
    request = pb.PreloadRequest(model_id="m", weights=[source(path)])
    await refused_preload(running.stub, request, CODE.DATA_LOSS, clean=config)


async def test_larger_than_free_host_memory(start_agent, model_file: Path, config) -> None:
    running = await start_agent(config.model_copy(update={"host_headroom_bytes": 1 << 60}))
    weights = [source(model_file)]
    request = pb.PreloadRequest(model_id="m", weights=weights, target_tier=pb.TIER_HOST)
    details = await refused_preload(running.stub, request, CODE.RESOURCE_EXHAUSTED, clean=config)
    assert "host shared memory" in details


async def test_larger_than_free_disk(start_agent, model_file: Path, config) -> None:
    running = await start_agent(config.model_copy(update={"disk_headroom_bytes": 1 << 60}))
    request = pb.PreloadRequest(model_id="m", weights=[source(model_file)])
    await refused_preload(running.stub, request, CODE.RESOURCE_EXHAUSTED, clean=config)


async def test_deadline_already_passed(start_agent, model_file: Path, config) -> None:
    running = await start_agent()
    past = Timestamp()
    past.FromNanoseconds(int((time.time() - 5) * 1e9))
    request = pb.PreloadRequest(model_id="m", weights=[source(model_file)], deadline=past)
    await refused_preload(running.stub, request, CODE.DEADLINE_EXCEEDED, clean=config)


async def test_deadline_passing_mid_load(start_agent, models_dir: Path, config) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=200_000)
    running = await start_agent()
    soon = Timestamp()
    soon.FromNanoseconds(int((time.time() + 0.5) * 1e9))
    with serve_files(models_dir, delay_s=0.05) as (base, _):
        request = pb.PreloadRequest(
            model_id="m", weights=[pb.Source(uri=base + path.name, sha256=sha256(path))],
            deadline=soon,
        )  # fmt: skip
        await refused_preload(running.stub, request, CODE.DEADLINE_EXCEEDED)
    assert_clean(config)


async def test_client_disconnect_mid_stream_cleans_up(
    start_agent, models_dir: Path, config
) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=200_000)
    running = await start_agent()
    with serve_files(models_dir, delay_s=0.05) as (base, _):
        call = running.stub.Preload(
            pb.PreloadRequest(
                model_id="m", weights=[pb.Source(uri=base + path.name, sha256=sha256(path))]
            )
        )
        async for progress in call:
            if progress.stage == pb.PreloadProgress.STAGE_FETCHING:
                break
        assert any(p.suffix == ".partial" for p in leftovers(Path(config.cache_dir)))
        call.cancel()
        for _ in range(100):
            if not leftovers(Path(config.cache_dir) / "models") and not running.agent.loading():
                break
            await asyncio.sleep(0.05)
    assert_clean(config)
    status = await running.stub.Status(pb.StatusRequest())
    assert list(status.models) == []


async def test_evict_during_preload_cancels_it(start_agent, models_dir: Path, config) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=200_000)
    running = await start_agent()
    with serve_files(models_dir, delay_s=0.05) as (base, _):
        call = running.stub.Preload(
            pb.PreloadRequest(
                model_id="m", weights=[pb.Source(uri=base + path.name, sha256=sha256(path))]
            )
        )
        async for progress in call:
            if progress.stage == pb.PreloadProgress.STAGE_FETCHING:
                break
        evicted = await running.stub.Evict(pb.EvictRequest(model_id="m"))
        assert evicted.bytes_freed == 0
        details = await expect(CODE.FAILED_PRECONDITION, call.read())
        assert "evicted while loading" in details
    assert_clean(config)
    assert list((await running.stub.Status(pb.StatusRequest())).models) == []


async def test_concurrent_preloads_of_one_model(start_agent, models_dir: Path, config) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=100_000)
    running = await start_agent()
    request = pb.PreloadRequest(model_id="m", weights=[source(path)])
    first, second = await asyncio.gather(
        preload_all(running.stub, request), preload_all(running.stub, request)
    )
    assert first[-1].stage == second[-1].stage == pb.PreloadProgress.STAGE_DONE
    assert len(leftovers(Path(config.shm_dir))) == 1


async def test_pickle_weights_refused_by_default(start_agent, models_dir: Path, config) -> None:
    path = models_dir / "m.bin"
    torch.save({"w": torch.ones(3)}, path)
    running = await start_agent()
    request = pb.PreloadRequest(model_id="m", weights=[source(path)], allow_pickle=True)
    details = await refused_preload(running.stub, request, CODE.PERMISSION_DENIED, clean=config)
    assert "pickle" in details


async def test_pickle_weights_allowed_are_loaded_weights_only(
    start_agent, models_dir: Path, config
) -> None:
    good = models_dir / "good.bin"
    torch.save({"w": torch.arange(6.0)}, good)
    evil = models_dir / "evil.bin"
    buffer = io.BytesIO()

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    pickle.dump({"w": Exploit()}, buffer)
    evil.write_bytes(buffer.getvalue())
    running = await start_agent(config.model_copy(update={"allow_pickle": True}))
    refused = pb.PreloadRequest(model_id="good", weights=[source(good)])
    await refused_preload(running.stub, refused, CODE.PERMISSION_DENIED)
    ok = pb.PreloadRequest(model_id="good", weights=[source(good)], allow_pickle=True)
    assert (await preload_all(running.stub, ok))[-1].stage == pb.PreloadProgress.STAGE_DONE
    bad = pb.PreloadRequest(model_id="evil", weights=[source(evil)], allow_pickle=True)
    await refused_preload(running.stub, bad, CODE.DATA_LOSS)
    status = await running.stub.Status(pb.StatusRequest())
    assert [m.model_id for m in status.models] == ["good"]
