"""Start-up removes only what the agent created in its tiers, and refuses shared directories as
tier roots with a configuration error before touching anything."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.errors import InvalidInput
from gpu_agent.config import AgentConfig
from gpu_agent.server import serve
from gpu_agent.tier_roots import MARKER, check_tier_root, check_tier_roots
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import StartAgent, leftovers, preload_all, source, write_model
from tests.harness.model_dirs import dir_sources, write_model_dir

HOME = Path("/home/alice")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("/", "file system root"),
        ("/dev/shm", "other programs share"),
        ("/dev/shm/", "other programs share"),
        ("/dev/shm/../shm", "other programs share"),
        ("/tmp", "top-level"),
        ("/var/cache", "other programs share"),
        ("/models", "top-level"),
        ("/home", "top-level"),
        ("/home/alice", "home directory"),
        ("", "empty"),
    ],
)
def test_shared_roots_are_refused(value: str, why: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_tier_root("shm_dir", value, home=HOME)
    assert why in str(refused.value)
    assert "a directory of its own" in str(refused.value)


@pytest.mark.parametrize(
    "value", ["/dev/shm/prewarm", "/var/cache/prewarm", "/tmp/agent/shm", "/home/alice/prewarm"]
)
def test_dedicated_subdirectories_are_accepted(value: str) -> None:
    assert check_tier_root("shm_dir", value, home=HOME) == Path(value).resolve()


def test_the_home_directory_is_refused_through_a_link(tmp_path: Path) -> None:
    home = tmp_path / "home" / "bob"
    home.mkdir(parents=True)
    (tmp_path / "link").symlink_to(home)
    with pytest.raises(InvalidInput, match="home directory"):
        check_tier_root("cache_dir", str(tmp_path / "link"), home=home)


def test_overlapping_tiers_are_refused() -> None:
    with pytest.raises(InvalidInput, match="overlap"):
        check_tier_roots("/var/cache/prewarm", "/var/cache/prewarm/shm", home=HOME)
    with pytest.raises(InvalidInput, match="overlap"):
        check_tier_roots("/srv/prewarm", "/srv/prewarm", home=HOME)


@pytest.mark.parametrize("setting", ["shm_dir", "cache_dir"])
async def test_serve_refuses_a_shared_root_before_touching_it(
    config: AgentConfig, setting: str
) -> None:
    shared = config.model_copy(update={setting: "/dev/shm" if setting == "shm_dir" else "/tmp"})
    with pytest.raises(InvalidInput, match=f"agent.{setting}"):
        await asyncio.wait_for(serve(shared, handle_signals=False), 30)


@pytest.mark.slow
def test_prewarm_agent_exits_with_a_configuration_error(tmp_path: Path, config) -> None:
    config_file = tmp_path / "shared.yaml"
    data = config.model_dump(mode="json")
    data["shm_dir"] = "/dev/shm"
    config_file.write_text(yaml.safe_dump({"agent": data}))
    result = subprocess.run(
        [sys.executable, "-m", "prewarm", "--config", str(config_file), "agent"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "agent.shm_dir is '/dev/shm'" in result.stderr


def _foreign(root: Path) -> dict[Path, bytes]:
    """Files someone else keeps in the tier's root (and in the agent's models/ subdirectory)."""
    files = {
        root / "other-app" / "segment": b"other",
        root / "loose.bin": b"loose",
        root / "models" / "someone-else" / "weights": b"theirs",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


async def test_start_up_removes_only_what_the_agent_created(
    start_agent: StartAgent, models_dir: Path, config: AgentConfig
) -> None:
    shm, cache = Path(config.shm_dir), Path(config.cache_dir)
    foreign = _foreign(shm) | _foreign(cache)
    single = models_dir / "m.safetensors"
    write_model(single)
    write_model_dir(models_dir / "tiny", seed=1)
    first = await start_agent()
    await preload_all(first.stub, pb.PreloadRequest(model_id="m", weights=[source(single)],
                                                    target_tier=pb.TIER_HOST))  # fmt: skip
    await preload_all(first.stub, pb.PreloadRequest(model_id="org/tiny",
                                                    weights=dir_sources(models_dir / "tiny"),
                                                    target_tier=pb.TIER_HOST))  # fmt: skip
    assert list((shm / "models").glob(f"*/{MARKER}"))
    # A killed fetch's leftovers in a directory the agent made (and marked).
    stale = cache / "models" / "half-fetched"
    stale.mkdir()
    (stale / MARKER).touch()
    (stale / "000-x.safetensors.partial").write_bytes(b"x")
    first.stop.set()
    await first.channel.close()

    second = await start_agent()
    for path, data in foreign.items():
        assert path.read_bytes() == data, path
    assert not stale.exists()
    # Host copies were the previous process's: gone; the disk tier's complete models stay.
    assert sorted(p for p in leftovers(shm) if p not in foreign) == []
    status = await second.stub.Status(pb.StatusRequest())
    assert sorted((m.model_id, m.tier) for m in status.models) == [
        ("m", pb.TIER_DISK),
        ("org/tiny", pb.TIER_DISK),
    ]
    await second.stub.Evict(pb.EvictRequest(model_id="m"))
    await second.stub.Evict(pb.EvictRequest(model_id="org/tiny"))
    assert sorted(p for p in leftovers(cache / "models")) == sorted(
        p for p in foreign if p.is_relative_to(cache / "models")
    )
