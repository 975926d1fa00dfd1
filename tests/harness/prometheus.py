"""A real Prometheus server for tests, with history backfilled from a :class:`SeriesBatch`.

Owns: writing a batch as an OpenMetrics counter (one sample per model at the end of every step,
so ``x - x offset <step>`` at a step's end is exactly that step's count), building TSDB blocks with
``promtool tsdb create-blocks-from openmetrics`` (from a batch, or from any OpenMetrics file),
starting ``prometheus`` on a free 127.0.0.1 port on those blocks (optionally with a
``--web.config.file``: basic auth, TLS, client certificates), waiting until it answers
``/-/ready``, and stopping it.
Must not: skip. A missing binary fails the test loudly and says how to install it
(``hack/testenv.sh``, which runs ``hack/testenv.d/10-prometheus.sh``).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from forecaster.types import SeriesBatch

METRIC = "inference_requests_total"


def binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; fails the test when either is missing."""
    found = []
    for name, env in (
        ("prometheus", "PREWARM_PROMETHEUS_BIN"),
        ("promtool", "PREWARM_PROMTOOL_BIN"),
    ):
        path = os.environ.get(env) or shutil.which(name)
        if not path or not Path(path).exists():
            pytest.fail(
                f"{name} is not installed: run ./hack/testenv.sh (installs Debian's prometheus) "
                f"or set {env}",
                pytrace=False,
            )
        found.append(path)
    return found[0], found[1]


def write_openmetrics(batch: SeriesBatch, path: Path, *, label: str = "model") -> None:
    """``batch`` as a cumulative counter ``inference_requests_total{<label>=...}``.

    Sample at ``start_s`` is 0; the sample at the end of step ``j`` is the sum of steps ``<= j``.
    NaN steps count as 0.
    """
    lines = [f"# HELP {METRIC} Requests served.", f"# TYPE {METRIC} counter"]
    cumulative = np.cumsum(np.nan_to_num(batch.counts), axis=1)
    # OpenMetrics wants the samples of one metric family grouped by series, in time order.
    for row, model in enumerate(batch.models):
        selector = f'{METRIC}{{{label}="{model}"}}'
        lines.append(f"{selector} 0 {batch.start_s:.3f}")
        for step in range(batch.steps):
            stamp = batch.start_s + (step + 1) * batch.step_s
            lines.append(f"{selector} {cumulative[row, step]:.1f} {stamp:.3f}")
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningPrometheus:
    """A started server: its base URL and data directory."""

    url: str
    data_dir: Path


@contextmanager
def prometheus_with_history(batch: SeriesBatch, workdir: Path) -> Iterator[RunningPrometheus]:
    """Backfill ``batch`` into a fresh TSDB under ``workdir``, serve it, stop it afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "history.om.txt"
    write_openmetrics(batch, source)
    with prometheus_with_openmetrics(source, workdir) as server:
        yield server


@contextmanager
def prometheus_with_openmetrics(
    source: Path,
    workdir: Path,
    *,
    web_config: dict[str, Any] | None = None,
    ready_context: ssl.SSLContext | None = None,
    ready_headers: dict[str, str] | None = None,
) -> Iterator[RunningPrometheus]:
    """Backfill the OpenMetrics file ``source`` (``# EOF`` terminated) and serve it.

    ``web_config`` is written as Prometheus's ``--web.config.file`` (basic_auth_users,
    tls_server_config); the readiness probe then uses ``ready_context`` (TLS) and
    ``ready_headers`` (auth), and the URL is ``https`` when the config has TLS.
    """
    prometheus, promtool = binaries()
    data = workdir / "tsdb"
    data.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"promtool could not backfill: {built.stderr or built.stdout}", pytrace=False)
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n", encoding="utf-8")
    port = free_port()
    args = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        # Backfilled history is years old; keep it however old it is.
        "--storage.tsdb.retention.time=100y",
    ]
    scheme = "http"
    if web_config is not None:
        web = workdir / "web.yml"
        web.write_text(yaml.safe_dump(web_config), encoding="utf-8")
        args.append(f"--web.config.file={web}")
        if "tls_server_config" in web_config:
            scheme = "https"
    log = (workdir / "prometheus.log").open("w", encoding="utf-8")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        _wait_ready(
            url,
            process,
            workdir / "prometheus.log",
            context=ready_context,
            headers=ready_headers,
        )
        yield RunningPrometheus(url=url, data_dir=data)
    finally:
        stop_process(process)
        log.close()


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, wait up to 20 s, then SIGKILL: a test server never outlives its test."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 60,
    *,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"prometheus exited with {process.returncode}: {log.read_text()[-2000:]}",
                pytrace=False,
            )
        try:
            request = urllib.request.Request(f"{url}/-/ready", headers=headers or {})
            with urllib.request.urlopen(request, timeout=2, context=context) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"prometheus at {url} not ready after {timeout_s} s", pytrace=False)
