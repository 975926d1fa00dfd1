"""What ``prewarm run`` logs when what it talks to is down: urllib3's retries against an
unreachable API server folded into one warning and periodic counts, failed lease rounds logged
once, "no forecasts yet" while Prometheus never answered; auth off refused on a public address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from prewarm.up.processes import free_port

PREWARM = [sys.executable, "-m", "prewarm"]


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def _settings(tmp_path: Path, **control: Any) -> Path:
    config = {
        "logging": {"retry_summary_s": 1.0},
        "forecaster": {"prometheus": {"url": f"http://127.0.0.1:{free_port()}"}},
        "daemon": {"http_port": 0, "tick_s": 1.0, "shutdown_grace_s": 1.0},
        # Few tries per call, so that the call in flight at SIGTERM ends soon.
        "actuator": {"retry": {"attempts": 3, "max_backoff_s": 0.5}},
        "control": {"listen_address": "127.0.0.1:0", "auth": {"mode": "none"}, **control},
    }
    path = tmp_path / "prewarm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_unreachable_api_server_and_prometheus_are_said_once_with_counts(
    tmp_path: Path,
) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{free_port()}")
    log = tmp_path / "stderr"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*PREWARM, "--config", str(_settings(tmp_path)), "--log-json", "run"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        # Until the history poll has failed and a few seconds of the outage were summarised.
        deadline = time.monotonic() + 90
        while not (
            "no forecasts yet" in log.read_text() and log.read_text().count(" retries since ") >= 2
        ):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = log.read_text()
    lines = stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is a complete JSON object
    said = [e["event"] for e in events]

    # urllib3's own "Retrying (Retry(total=2, ...))" warnings never reach the log ...
    assert not [s for s in said if s.startswith("Retrying")]
    # ... the first of the outage does, as the API server's, and then counts, one a second here.
    assert said.count("kube-apiserver unreachable; retrying (further retries are counted, with a "
                      "summary every 1 s)") == 1  # fmt: skip
    summaries = [e for e in events if e["event"].startswith("kube-apiserver unreachable: ")]
    assert 1 <= len(summaries) <= 12, said
    assert all(e["retries"] > 1 and e["since"].endswith("Z") for e in summaries), summaries
    counts = [e["retries"] for e in summaries]
    assert counts == sorted(set(counts)), counts
    # Failed lease rounds back off and are said once while the error stays the same.
    assert said.count("lease round failed; retrying with backoff") == 1
    # Prometheus never answered: there is nothing stale to keep.
    assert "history source unavailable; no forecasts yet" in said
    assert not [s for s in said if "stale" in s]
    assert len(lines) <= 30, said
    assert process.returncode == 0


def test_auth_off_on_a_public_address_is_one_config_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path, listen_address="0.0.0.0:50071")
    done = subprocess.run(
        [*PREWARM, "--config", str(settings), "run"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("prewarm: error: ")
    assert "control.listen_address" in line
    assert "127.0.0.1:<port>" in line
