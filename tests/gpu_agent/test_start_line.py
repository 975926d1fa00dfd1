"""A real ``prewarm agent`` process says at start where it listens, with what auth, into which
tiers and, without a GPU tier, why; in console lines and in JSON lines. Auth off is allowed on
loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.errors import InvalidInput
from gpu_agent.auth import checked_listen
from gpu_agent.config import AgentConfig, AuthConfig
from gpu_agent.nvml import PynvmlNvml

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **overrides: Any) -> Path:
    agent = {
        "listen": "127.0.0.1:0",
        "cache_dir": str(tmp_path / "cache"),
        "shm_dir": str(tmp_path / "shm"),
        "metrics_port": None,
        "auth": {"mode": "none"},
        **overrides,
    }
    path = tmp_path / "prewarm.yaml"
    path.write_text(yaml.safe_dump({"agent": agent}))
    return path


def _run_agent(config: Path, *flags: str) -> tuple[int, str]:
    """Start ``prewarm [flags] agent``, wait until it serves, stop it (SIGTERM); its port and
    stderr. CUDA is hidden, as on a node without a GPU for this process."""
    port_file = config.parent / "port"
    port_file.unlink(missing_ok=True)
    stderr = config.parent / "stderr"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "prewarm", "--config", str(config), *flags, "agent",
             "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=sink,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not port_file.exists():
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        port = int(port_file.read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, stderr.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    return port, stderr.read_text()


def _no_gpu_reason() -> str | None:
    """Why NVML finds no GPU here (None on a GPU machine, where CUDA is hidden instead)."""
    return PynvmlNvml().unavailable_reason()


def test_console_start_lines_state_address_auth_tiers_and_the_missing_gpu(
    tmp_path: Path,
) -> None:
    port, stderr = _run_agent(_config(tmp_path))
    (serving,) = [line for line in stderr.splitlines() if " gpu agent serving " in line]
    assert " info " in serving
    assert f"address=127.0.0.1:{port}" in serving
    assert "auth=none" in serving
    assert f'host="{tmp_path / "shm"}, ' in serving
    assert f'disk="{tmp_path / "cache"}, ' in serving
    reason = _no_gpu_reason()
    if reason is not None:
        assert "tiers=host,disk" in serving
        assert f'gpu=none gpu_reason="{reason}"' in serving
    else:  # NVML sees GPUs that CUDA, hidden, does not: said as a warning
        assert "tiers=gpu,host,disk" in serving
        assert "CUDA sees none" in stderr
    (auth_off,) = [line for line in stderr.splitlines() if "auth is off" in line]
    assert " warning " in auth_off
    assert "loopback only" in auth_off


def test_json_start_line_has_every_field(tmp_path: Path) -> None:
    config = _config(tmp_path, auth={"mode": "token", "token": "s3cret"})
    port, stderr = _run_agent(config, "--log-json")
    events = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    (serving,) = [e for e in events if e["event"] == "gpu agent serving"]
    assert serving["level"] == "info"
    assert serving["logger"] == "gpu_agent.server"
    assert serving["timestamp"].endswith("Z")
    assert serving["address"] == f"127.0.0.1:{port}"
    assert serving["auth"] == "bearer"
    assert serving["host"].startswith(f"{tmp_path / 'shm'}, ")
    assert serving["disk"].startswith(f"{tmp_path / 'cache'}, ")
    reason = _no_gpu_reason()
    if reason is not None:
        assert serving["tiers"] == "host,disk"
        assert serving["gpu"] == "none"
        assert serving["gpu_reason"] == reason
    else:
        assert serving["tiers"] == "gpu,host,disk"
    assert not [e for e in events if "auth is off" in e["event"]]


def test_auth_off_on_a_public_address_is_refused_at_start(tmp_path: Path) -> None:
    config = _config(tmp_path, listen="0.0.0.0:0")
    done = subprocess.run(
        [sys.executable, "-m", "prewarm", "--config", str(config), "agent"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("prewarm: error: agent.auth.mode=none")
    assert "set agent.listen to 127.0.0.1:<port>" in line


def test_auth_off_moves_the_default_address_to_loopback() -> None:
    assert checked_listen(AgentConfig(auth=AuthConfig(mode="none"))) == "127.0.0.1:50061"
    assert checked_listen(AgentConfig()) == "0.0.0.0:50061"  # token auth: all interfaces
    on_loopback = AgentConfig(listen="[::1]:7000", auth=AuthConfig(mode="none"))
    assert checked_listen(on_loopback) == "[::1]:7000"
    with pytest.raises(InvalidInput, match=r"agent\.listen is 10\.0\.0\.5:50061"):
        checked_listen(AgentConfig(listen="10.0.0.5:50061", auth=AuthConfig(mode="none")))
