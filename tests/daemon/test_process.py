"""``prewarm run`` as a real process: start-up errors, probes, metrics, SIGTERM within the grace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.ids import ModelId
from forecaster.types import SeriesBatch
from tests.harness.k8s import ControlPlane, free_port
from tests.harness.prometheus import prometheus_with_history

PREWARM = [sys.executable, "-m", "prewarm"]


def test_invalid_config_names_the_field_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "prewarm.yaml"
    config.write_text("daemon:\n  tick_s: -1\n")
    done = subprocess.run(
        [*PREWARM, "--config", str(config), "run"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "daemon.tick_s" in done.stderr
    assert done.stderr.count("\n") == 1  # one line, no traceback


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


@pytest.mark.k8s
@pytest.mark.prometheus
@pytest.mark.slow
def test_daemon_process_serves_probes_and_stops_on_sigterm(
    tmp_path: Path, k8s_control_plane: ControlPlane, k8s_namespace: str
) -> None:
    now = time.time()
    start = (now // 60) * 60 - 6 * 3600
    minutes = np.arange(6 * 60)
    counts = (20 + 10 * np.sin(minutes / 30)).round()[None, :]
    batch = SeriesBatch(models=(ModelId("chat"),), start_s=start, step_s=60.0, counts=counts)
    with prometheus_with_history(batch, tmp_path / "prom") as prometheus:
        http_port, grpc_port = free_port(), free_port()
        config = {
            "forecaster": {"prometheus": {"url": prometheus.url}, "history_window_s": 6 * 3600},
            "actuator": {"namespace": k8s_namespace},
            "daemon": {
                "mode": "advisory",
                "tick_s": 1.0,
                "http_port": http_port,
                "shutdown_grace_s": 5.0,
                "leader_election": {"lease_duration_s": 4, "retry_period_s": 1.0},
            },
            "control": {
                "listen_address": f"127.0.0.1:{grpc_port}",
                "namespace": k8s_namespace,
                "auth": {"mode": "none"},
            },
        }
        path = tmp_path / "prewarm.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "KUBECONFIG": str(k8s_control_plane.kubeconfig)}
        process = subprocess.Popen(
            [*PREWARM, "--config", str(path), "--log-json", "--log-level", "info", "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    break
                try:
                    if _get(f"{base}/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.3)
            assert process.poll() is None, process.communicate()[0]
            assert _get(f"{base}/readyz")[0] == 200
            assert _get(f"{base}/healthz")[0] == 200
            status, metrics = _get(f"{base}/metrics")
            assert status == 200
            assert 'prewarm_forecast_rps{horizon="15m",model="chat",quantile="0.9"}' in metrics
            assert "prewarm_is_leader 1.0" in metrics
            assert 'prewarm_ticks_total{result="ok"}' in metrics
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
            took = time.monotonic() - began
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, output
    assert took < 5.0 + 3.0
    assert "prewarm daemon stopped" in output
