"""An agent killed mid-load (SIGKILL, a real `prewarm agent` process) restarts clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from gpu_agent.config import AgentConfig
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.gpu_agent.httpserver import serve_files
from tests.harness.agent import sha256, source, write_model


def start_agent_process(config: AgentConfig, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    config_file = tmp_path / "prewarm.yaml"
    config_file.write_text(yaml.safe_dump({"agent": config.model_dump(mode="json")}))
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "prewarm", "--config", str(config_file), "agent",
         "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(process.stderr.read().decode() if process.stderr else "")
        time.sleep(0.05)
    return process, int(port_file.read_text())


@pytest.mark.slow
def test_killed_mid_load_restarts_clean(tmp_path: Path, models_dir: Path, config) -> None:
    path = models_dir / "m.safetensors"
    write_model(path, numel=200_000)
    other = models_dir / "other.safetensors"
    write_model(other, seed=3)
    cache = Path(config.cache_dir)
    process, port = start_agent_process(config, tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GpuAgentStub(channel)
            done = list(stub.Preload(pb.PreloadRequest(model_id="other", weights=[source(other)],
                                                       target_tier=pb.TIER_HOST)))  # fmt: skip
            assert done[-1].stage == pb.PreloadProgress.STAGE_DONE
            with serve_files(models_dir, delay_s=0.05) as (base, _):
                call = stub.Preload(
                    pb.PreloadRequest(
                        model_id="m",
                        weights=[pb.Source(uri=base + path.name, sha256=sha256(path))],
                        target_tier=pb.TIER_HOST,
                    )
                )
                for progress in call:
                    if progress.stage == pb.PreloadProgress.STAGE_FETCHING:
                        break
                assert list(cache.rglob("*.partial"))
                process.send_signal(signal.SIGKILL)
                process.wait(30)
                call.cancel()
        assert list(cache.rglob("*.partial"))  # the dead agent left them behind

        process, port = start_agent_process(config, tmp_path)
        assert not list(cache.rglob("*.partial"))
        assert not list(Path(config.shm_dir).rglob("*"))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GpuAgentStub(channel)
            status = stub.Status(pb.StatusRequest())
            # The complete model survives on disk; the half-fetched one is gone without trace.
            assert {(m.model_id, m.tier) for m in status.models} == {("other", pb.TIER_DISK)}
            model_dirs = list((cache / "models").iterdir())
            assert len(model_dirs) == 1
            again = list(stub.Preload(pb.PreloadRequest(model_id="m", weights=[source(path)])))
            assert again[-1].stage == pb.PreloadProgress.STAGE_DONE
    finally:
        process.kill()
        process.wait(30)


@pytest.mark.slow
def test_sigterm_stops_gracefully(tmp_path: Path, config) -> None:
    process, port = start_agent_process(config, tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GpuAgentStub(channel)
            assert not stub.Status(pb.StatusRequest()).gpu_available
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()


@pytest.mark.parametrize("auth", [None, {"token_file": "/nonexistent/token"}])
def test_token_mode_without_token_is_a_config_error(
    tmp_path: Path, config, auth: dict[str, str] | None
) -> None:
    """Token mode is the default: an agent given no token (or an unreadable token file) does
    not start, and says how to configure one."""
    config_file = tmp_path / "bad.yaml"
    data = config.model_dump(mode="json")
    if auth is None:
        del data["auth"]
    else:
        data["auth"] = auth
    config_file.write_text(yaml.safe_dump({"agent": data}))
    result = subprocess.run(
        [sys.executable, "-m", "prewarm", "--config", str(config_file), "agent"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "auth.token" in result.stderr
    assert "Traceback" not in result.stderr
