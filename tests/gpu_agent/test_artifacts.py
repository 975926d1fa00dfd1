"""Compiled artifacts are fetched, verified and installed where the pod's cache dir points."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import grpc
import pytest

from gpu_agent.artifacts import install_cache_tar, mega_cache_path
from gpu_agent.client import load_compile_artifacts
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import leftovers, preload_all, source, write_model


def make_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


async def test_preload_installs_mega_cache_and_inductor_dir(
    start_agent, models_dir: Path, tmp_path: Path
) -> None:
    weights = models_dir / "m.safetensors"
    write_model(weights)
    mega = models_dir / "m.mega"
    mega.write_bytes(b"not-really-a-cache")
    archive = models_dir / "inductor.tar.gz"
    make_tar(archive, {"fxgraph/ab/abc123": b"graph", "triton/0/kernel.cubin": b"kernel"})
    install = tmp_path / "compile" / "pod-a"
    running = await start_agent()
    request = pb.PreloadRequest(
        model_id="org/m",
        weights=[source(weights)],
        artifacts=[
            pb.Artifact(source=source(mega), kind=pb.ARTIFACT_KIND_MEGA_CACHE,
                        install_dir=str(install)),
            pb.Artifact(source=source(archive), kind=pb.ARTIFACT_KIND_INDUCTOR_CACHE_TAR,
                        install_dir=str(install / "inductor")),
        ],
        target_tier=pb.TIER_DISK,
    )  # fmt: skip
    progress = await preload_all(running.stub, request)
    assert pb.PreloadProgress.STAGE_ARTIFACTS in [p.stage for p in progress]
    assert mega_cache_path(install, "org/m").read_bytes() == b"not-really-a-cache"  # type: ignore[arg-type]
    assert (install / "inductor" / "fxgraph/ab/abc123").read_bytes() == b"graph"
    assert (install / "inductor" / "triton/0/kernel.cubin").read_bytes() == b"kernel"
    assert not [p for p in leftovers(install) if p.name.startswith(".prewarm-")]


@pytest.mark.parametrize("install_dir", ["/etc", "{tmp}/compile/../escape", "relative"])
async def test_install_dir_outside_roots(
    start_agent, models_dir: Path, tmp_path: Path, install_dir: str
) -> None:
    weights = models_dir / "m.safetensors"
    write_model(weights)
    running = await start_agent()
    request = pb.PreloadRequest(
        model_id="m",
        weights=[source(weights)],
        artifacts=[pb.Artifact(source=source(weights), kind=pb.ARTIFACT_KIND_MEGA_CACHE,
                               install_dir=install_dir.replace("{tmp}", str(tmp_path)))],
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await preload_all(running.stub, request)
    assert failure.value.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_archive_members_escaping_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    make_tar(archive, {"../../escape": b"x"})
    target = tmp_path / "install"
    from common.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        install_cache_tar(archive, target)
    assert not (tmp_path / "escape").exists()
    assert leftovers(target) == []


def test_corrupt_archive_is_data_loss(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(b"\x1f\x8b garbage")
    from common.errors import DataLoss

    with pytest.raises(DataLoss):
        install_cache_tar(archive, tmp_path / "install")


def test_load_compile_artifacts_without_file_is_a_cold_start(tmp_path: Path) -> None:
    assert load_compile_artifacts(tmp_path / "missing.mega-cache") is False
