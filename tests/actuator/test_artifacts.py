"""Compiled artifacts from the catalog reach a real GPU agent with the Preload and are installed.

The agent is the real one (``gpu_agent.server.serve`` on 127.0.0.1, NVML faked: no GPU here); the
actuator is wired as the daemon wires it (``weight_sources`` / ``artifact_sources`` over a parsed
catalog). The installed paths asserted are the ones ``docs/artifacts.md`` documents.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from actuator.agents import AgentActuator
from actuator.config import ActuatorConfig
from common.errors import DataLoss
from common.ids import ModelId, NodeName
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig, AuthConfig
from gpu_agent.server import serve
from gpu_agent.specs import ARTIFACT_KINDS as AGENT_KINDS
from planner.actions import Preload, Tier
from planner.catalog import ARTIFACT_KINDS, Catalog, parse_catalog
from prewarm.daemon.app import artifact_sources, weight_sources
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.gpu_agent.fakes import FakeNoGpuNvml
from tests.harness.agent import write_model


@dataclass
class RunningAgent:
    address: str
    stub: pb_grpc.GpuAgentStub
    compile_root: Path
    models_dir: Path


@pytest.fixture
async def real_agent(tmp_path: Path) -> AsyncIterator[RunningAgent]:
    """A real agent whose install root is ``tmp_path/compile`` (the chart's compile-cache
    hostPath in a cluster) and whose file sources lie under ``tmp_path/models``."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    config = AgentConfig(
        listen="127.0.0.1:0",
        cache_dir=str(tmp_path / "cache"),
        shm_dir=str(tmp_path / "shm"),
        host_headroom_bytes=0,
        disk_headroom_bytes=0,
        allowed_file_roots=[str(models_dir)],
        allowed_install_roots=[str(tmp_path / "compile")],
        shutdown_grace_s=0.5,
        metrics_port=None,
        auth=AuthConfig(mode="none"),  # 127.0.0.1 only
    )
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    agent = Agent(config, nvml=FakeNoGpuNvml())
    task = asyncio.create_task(
        serve(config, agent=agent, stop=stop, on_ready=ready.set_result, handle_signals=False)
    )
    port = await asyncio.wait_for(ready, 30)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield RunningAgent(
        f"127.0.0.1:{port}", pb_grpc.GpuAgentStub(channel), tmp_path / "compile", models_dir
    )
    await channel.close()
    stop.set()
    await asyncio.wait_for(task, 30)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def catalog_entry(agent: RunningAgent, model: str, *, mega_sha256: str | None = None) -> str:
    """A catalog entry for ``model``: tiny weights, a mega-cache and an Inductor cache archive,
    all as files under the agent's source root. ``mega_sha256`` overrides the mega-cache's sum."""
    directory = agent.models_dir / model.replace("/", "_")
    weights = directory / "model.safetensors"
    write_model(weights)
    mega = directory / "compiled.mega-cache"
    mega.write_bytes(b"mega-cache of " + model.encode())
    archive = directory / "inductor.tar.gz"
    archive.write_bytes(tar_of({"fxgraph/ab/fx-" + model[-1]: b"graph", "triton/0/k.cubin": b"k"}))
    return f"""
  {model}:
    weights: [{{uri: '{weights.as_uri()}', sha256: '{sha256(weights.read_bytes())}'}}]
    artifacts:
      - {{uri: '{mega.as_uri()}', sha256: '{mega_sha256 or sha256(mega.read_bytes())}',
          kind: mega_cache}}
      - {{uri: '{archive.as_uri()}', sha256: '{sha256(archive.read_bytes())}',
          kind: inductor_cache_tar}}
"""


def wired(agent: RunningAgent, catalog: Catalog) -> AgentActuator:
    """The actuator as ``prewarm.daemon.app`` builds it, with the agent's address."""

    async def address_of(node: NodeName) -> str:
        return agent.address

    return AgentActuator(
        ActuatorConfig(),
        address_of,
        weights_of=lambda model: weight_sources(catalog, model),
        artifacts_of=lambda model: artifact_sources(catalog, model),
    )


def preload(model: str, now_s: float) -> Preload:
    return Preload(
        model=ModelId(model), node=NodeName("gpu-0"), tier=Tier.DISK, bytes=4096,
        deadline_s=now_s + 300, value_per_byte=0.1, reason="test", value=1.0,
    )  # fmt: skip


def test_catalog_kinds_are_exactly_the_agents_kinds() -> None:
    assert {pb.ArtifactKind.Name(k) for k in AGENT_KINDS} == {
        f"ARTIFACT_KIND_{kind.upper()}" for kind in ARTIFACT_KINDS
    }


async def test_preload_carries_catalog_artifacts_and_the_agent_installs_them(
    real_agent: RunningAgent,
) -> None:
    root = real_agent.compile_root
    catalog = parse_catalog(
        "models:" + catalog_entry(real_agent, "org/llama-a"), artifact_root=str(root)
    )
    actuator = wired(real_agent, catalog)
    # The agent checks the Preload's deadline against its wall clock.
    now = time.time()

    result = await actuator.preload(preload("org/llama-a", now), now_s=now)
    await actuator.close()

    assert result.ok, result.detail
    # Where docs/artifacts.md says: <root>/<key>/<key>.mega-cache and <root>/<key>/inductor/.
    model_dir = root / "org_llama-a"
    assert (model_dir / "org_llama-a.mega-cache").read_bytes() == b"mega-cache of org/llama-a"
    assert (model_dir / "inductor" / "fxgraph" / "ab" / "fx-a").read_bytes() == b"graph"
    assert (model_dir / "inductor" / "triton" / "0" / "k.cubin").read_bytes() == b"k"


async def test_artifact_with_wrong_sha256_fails_its_preload_alone(
    real_agent: RunningAgent,
) -> None:
    root = real_agent.compile_root
    wrong = "0" * 64
    catalog = parse_catalog(
        "models:"
        + catalog_entry(real_agent, "good-b")
        + catalog_entry(real_agent, "bad-c", mega_sha256=wrong),
        artifact_root=str(root),
    )
    actuator = wired(real_agent, catalog)
    now = time.time()

    good, bad = await actuator.apply([preload("good-b", now), preload("bad-c", now)], [], now_s=now)
    await actuator.close()

    assert good.ok, good.detail
    assert (root / "good-b" / "good-b.mega-cache").exists()
    assert not bad.ok
    assert isinstance(bad.error, DataLoss)
    assert "checksum mismatch" in bad.detail
    assert "compiled.mega-cache" in bad.detail
    assert f"expected sha256 {wrong}" in bad.detail
    # The failed load left nothing behind: the model is not held, its artifact not installed.
    status = await real_agent.stub.Status(pb.StatusRequest())
    assert [m.model_id for m in status.models] == ["good-b"]
    assert not (root / "bad-c" / "bad-c.mega-cache").exists()
