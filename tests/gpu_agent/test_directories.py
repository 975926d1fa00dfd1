"""Directory models over real gRPC: every file of a model directory, verified, materialised
read-only in the host tier at ``<shm_dir>/models/<slug>/<revision>/`` with a ``current`` link.
"""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest

from common.errors import InvalidInput
from gpu_agent.config import AgentConfig
from gpu_agent.model_dir import (
    DirectoryEntry,
    check_relpath,
    digest_revision,
    directory_entries,
    model_slug,
)
from gpu_agent.tier_roots import MARKER
from protos import gpu_agent_pb2 as pb
from tests.gpu_agent.httpserver import serve_files
from tests.harness.agent import leftovers, preload_all, refused_preload, sha256
from tests.harness.model_dirs import (
    current_target,
    dir_sources,
    model_base,
    tree_bytes,
    write_model_dir,
)

MODEL = "org/tiny-dir"


def _request(sources: list[pb.Source], **kwargs: object) -> pb.PreloadRequest:
    return pb.PreloadRequest(
        model_id=MODEL,
        weights=sources,
        target_tier=pb.TIER_HOST,
        **kwargs,  # type: ignore[arg-type]
    )


async def _status_of(stub: object, model_id: str = MODEL) -> pb.ModelHolding:
    status = await stub.Status(pb.StatusRequest())  # type: ignore[attr-defined]
    (held,) = [m for m in status.models if m.model_id == model_id]
    return held


def _modes(directory: Path) -> dict[str, int]:
    """Permission bits of ``directory`` ("") and of everything under it, by relative path."""
    found = {"": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        found[str(path.relative_to(directory))] = stat.S_IMODE(path.stat().st_mode)
    return found


def _entries(directory: Path) -> list[str]:
    """The names in ``directory``, less the agent's ownership marker."""
    return sorted(p.name for p in directory.iterdir() if p.name != MARKER)


def _no_partials(config: AgentConfig) -> None:
    for root in (Path(config.cache_dir), Path(config.shm_dir)):
        assert not [p for p in root.rglob("*") if ".partial" in p.name], leftovers(root)


async def test_a_directory_model_is_materialised_read_only_with_a_current_link(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    files = write_model_dir(models_dir / "tiny")
    running = await start_agent()
    progress = await preload_all(running.stub, _request(dir_sources(models_dir / "tiny")))
    assert progress[-1].stage == pb.PreloadProgress.STAGE_DONE
    assert progress[-1].tier == pb.TIER_HOST

    held = await _status_of(running.stub)
    base = model_base(Path(config.shm_dir), MODEL)
    assert base.name == "org--tiny-dir"
    assert held.model_dir == str(base / held.revision)
    assert held.current_dir == str(base / "current")
    entries = [DirectoryEntry(p, "", sha256(models_dir / "tiny" / p)) for p in files]
    assert held.revision == digest_revision(entries)
    assert current_target(Path(config.shm_dir), MODEL) == held.revision
    # The pod's view: the same files at the same paths, through the fixed link.
    assert tree_bytes(Path(held.current_dir)) == files
    assert held.bytes == sum(len(b) for b in files.values())
    modes = _modes(Path(held.model_dir))
    assert modes[""] == 0o555
    assert modes["tokenizer"] == 0o555
    assert {mode for path, mode in modes.items() if path in files} == {0o444}
    _no_partials(config)

    # Preloading it again is a no-op; evicting removes the directory and its link.
    again = await preload_all(running.stub, _request(dir_sources(models_dir / "tiny")))
    assert again[-1].message == "already held"
    await running.stub.Evict(pb.EvictRequest(model_id=MODEL))
    assert not base.exists()
    assert leftovers(Path(config.cache_dir) / "models") == []


async def test_a_directory_model_is_served_over_http_and_named_revisions_are_used(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    files = write_model_dir(models_dir / "tiny", seed=3)
    running = await start_agent()
    with serve_files(models_dir / "tiny") as (base_url, _):
        sources = dir_sources(models_dir / "tiny", base_url=base_url)
        await preload_all(running.stub, _request(sources, revision="v1.0"))
    held = await _status_of(running.stub)
    assert held.revision == "v1.0"
    assert Path(held.model_dir).name == "v1.0"
    assert tree_bytes(Path(held.current_dir)) == files


async def test_a_new_revision_replaces_the_old_one_and_current_follows(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    write_model_dir(models_dir / "r1", seed=1)
    files_2 = write_model_dir(models_dir / "r2", seed=2)
    running = await start_agent()
    await preload_all(running.stub, _request(dir_sources(models_dir / "r1"), revision="r1"))
    await preload_all(running.stub, _request(dir_sources(models_dir / "r2"), revision="r2"))
    held = await _status_of(running.stub)
    assert held.revision == "r2"
    shm = Path(config.shm_dir)
    assert current_target(shm, MODEL) == "r2"
    assert _entries(model_base(shm, MODEL)) == ["current", "r2"]
    assert tree_bytes(Path(held.current_dir)) == files_2
    cached = sorted(p.name for p in (Path(config.cache_dir) / "models").iterdir())
    assert len(cached) == 1
    assert cached[0].endswith("@r2")


async def test_a_leased_revision_stays_beside_the_new_one_until_its_lease_ends(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    files_1 = write_model_dir(models_dir / "r1", seed=1)
    files_2 = write_model_dir(models_dir / "r2", seed=2)
    running = await start_agent()
    await preload_all(running.stub, _request(dir_sources(models_dir / "r1"), revision="r1"))
    lease = await running.stub.Attach(
        pb.AttachRequest(model_id=MODEL, max_tier=pb.TIER_HOST, lease_only=True, lease_ttl_s=600)
    )
    assert lease.tier == pb.TIER_HOST
    assert not lease.tensors
    held_1 = await _status_of(running.stub)
    done = await preload_all(running.stub, _request(dir_sources(models_dir / "r2"), revision="r2"))
    assert done[-1].stage == pb.PreloadProgress.STAGE_DONE
    assert done[-1].message != "already held"
    shm = Path(config.shm_dir)
    # The new revision is what pods find now; the leased one is still whole beside it.
    assert current_target(shm, MODEL) == "r2"
    assert _entries(model_base(shm, MODEL)) == ["current", "r1", "r2"]
    assert tree_bytes(Path(held_1.model_dir)) == files_1
    held_2 = await _status_of(running.stub)
    assert (held_2.revision, held_2.attached) == ("r2", 0)
    assert tree_bytes(Path(held_2.model_dir)) == files_2
    second = await running.stub.Attach(
        pb.AttachRequest(model_id=MODEL, max_tier=pb.TIER_HOST, lease_only=True, lease_ttl_s=600)
    )
    assert (await _status_of(running.stub)).attached == 1
    await running.stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id))
    assert _entries(model_base(shm, MODEL)) == ["current", "r2"]
    cached = [p.name for p in (Path(config.cache_dir) / "models").iterdir()]
    assert len(cached) == 1
    assert cached[0].endswith("@r2")
    await running.stub.Release(pb.ReleaseRequest(lease_id=second.lease_id))
    assert _entries(model_base(shm, MODEL)) == ["current", "r2"]
    _no_partials(config)


async def test_a_named_revision_with_other_files_is_refused(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    write_model_dir(models_dir / "r1", seed=1)
    write_model_dir(models_dir / "other", seed=2)
    running = await start_agent()
    await preload_all(running.stub, _request(dir_sources(models_dir / "r1"), revision="v1"))
    details = await refused_preload(
        running.stub,
        _request(dir_sources(models_dir / "other"), revision="v1"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "other files" in details
    assert current_target(Path(config.shm_dir), MODEL) == "v1"


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("../escape.json", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a//b.json", "empty"),
        ("./config.json", "'.'"),
        ("a\\b.json", "backslash"),
        ("bad name.json", "may contain only"),
        ("x" * 600, "longer than"),
    ],
)
async def test_bad_paths_are_refused_before_anything_is_written(
    start_agent, models_dir: Path, config: AgentConfig, path: str, needle: str
) -> None:
    write_model_dir(models_dir / "tiny")
    sources = dir_sources(models_dir / "tiny")
    sources[0].path = path
    running = await start_agent()
    details = await refused_preload(
        running.stub, _request(sources), grpc.StatusCode.INVALID_ARGUMENT, clean=config
    )
    assert needle in details


async def test_mixed_duplicate_and_revision_errors_are_clear(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    write_model_dir(models_dir / "tiny")
    running = await start_agent()
    mixed = dir_sources(models_dir / "tiny")
    mixed[1].path = ""
    details = await refused_preload(
        running.stub, _request(mixed), grpc.StatusCode.INVALID_ARGUMENT, clean=config
    )
    assert "every weights source has a path" in details
    twice = dir_sources(models_dir / "tiny")
    twice[1].path = twice[0].path
    details = await refused_preload(
        running.stub, _request(twice), grpc.StatusCode.INVALID_ARGUMENT, clean=config
    )
    assert "listed twice" in details
    details = await refused_preload(
        running.stub,
        _request(dir_sources(models_dir / "tiny"), revision="../x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        clean=config,
    )
    assert "revision" in details


async def test_one_bad_checksum_leaves_nothing_and_the_held_revision_untouched(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    files_1 = write_model_dir(models_dir / "r1", seed=1)
    write_model_dir(models_dir / "r2", seed=2)
    running = await start_agent()
    await preload_all(running.stub, _request(dir_sources(models_dir / "r1"), revision="r1"))
    before_cache = leftovers(Path(config.cache_dir))
    bad = dir_sources(models_dir / "r2")
    bad[-1].sha256 = "0" * 64
    details = await refused_preload(
        running.stub, _request(bad, revision="r2"), grpc.StatusCode.DATA_LOSS
    )
    assert "checksum mismatch" in details
    assert bad[-1].uri in details
    shm = Path(config.shm_dir)
    assert current_target(shm, MODEL) == "r1"
    assert _entries(model_base(shm, MODEL)) == ["current", "r1"]
    assert tree_bytes(model_base(shm, MODEL) / "current") == files_1
    assert leftovers(Path(config.cache_dir)) == before_cache
    _no_partials(config)
    held = await _status_of(running.stub)
    assert held.revision == "r1"


async def test_a_source_outside_the_roots_is_refused_for_directories_too(
    start_agent, models_dir: Path, config: AgentConfig, tmp_path: Path
) -> None:
    write_model_dir(tmp_path / "elsewhere")
    running = await start_agent()
    details = await refused_preload(
        running.stub,
        _request(dir_sources(tmp_path / "elsewhere")),
        grpc.StatusCode.PERMISSION_DENIED,
        clean=config,
    )
    assert "outside the allowed file roots" in details


async def test_two_models_with_one_slug_are_refused(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    write_model_dir(models_dir / "tiny")
    running = await start_agent()
    await preload_all(running.stub, _request(dir_sources(models_dir / "tiny")))
    clash = pb.PreloadRequest(
        model_id="org--tiny-dir", weights=dir_sources(models_dir / "tiny"), target_tier=pb.TIER_HOST
    )
    details = await refused_preload(running.stub, clash, grpc.StatusCode.FAILED_PRECONDITION)
    assert "share the directory" in details


async def test_a_directory_on_disk_survives_a_restart_and_is_materialised_again(
    start_agent, models_dir: Path, config: AgentConfig
) -> None:
    files = write_model_dir(models_dir / "tiny")
    first = await start_agent()
    await preload_all(first.stub, _request(dir_sources(models_dir / "tiny"), revision="v1"))
    second = await start_agent()
    # A new agent on the same tiers (as after a restart): start-up empties the host tier; the
    # disk tier kept the directory, so a Preload without sources moves it up again.
    assert not model_base(Path(config.shm_dir), MODEL).exists()
    held = await _status_of(second.stub)
    assert held.tier == pb.TIER_DISK
    assert held.model_dir == ""
    await preload_all(second.stub, pb.PreloadRequest(model_id=MODEL, target_tier=pb.TIER_HOST))
    held = await _status_of(second.stub)
    assert held.revision == "v1"
    assert tree_bytes(Path(held.current_dir)) == files


def test_relpath_rules() -> None:
    assert check_relpath("tokenizer/vocab.json") == "tokenizer/vocab.json"
    for bad in ("", "/a", "a/../b", "a/", ".", "a/./b", "x.partial"):
        with pytest.raises(InvalidInput):
            check_relpath(bad)


def test_directory_entries_and_slugs() -> None:
    assert directory_entries([("file:///m/a", "0" * 64, "", 0)]) is None
    entries = directory_entries([("file:///m/a", "1" * 64, "a", 3)])
    assert entries == [DirectoryEntry("a", "file:///m/a", "1" * 64, 3)]
    with pytest.raises(InvalidInput, match="needs it to be a directory"):
        directory_entries([("u1", "", "a", 0), ("u2", "", "a/b", 0)])
    # The expander seam: a directory-like URI is listed by it.
    listed = directory_entries(
        [("hf://org/name@main", "", "", 0)],
        expand=lambda uri, _sha: [DirectoryEntry("config.json", uri + "/config.json", "2" * 64)],
    )
    assert listed is not None
    assert listed[0].path == "config.json"
    assert model_slug("org/name:v1") == "org--name_v1"
    assert model_slug("..") == "_."
    a = [DirectoryEntry("x", "", "1" * 64), DirectoryEntry("y", "", "2" * 64)]
    assert digest_revision(a) == digest_revision(list(reversed(a)))
