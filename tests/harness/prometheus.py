"""A real Prometheus server for tests, with history backfilled from a :class:`SeriesBatch`.

Owns: the pytest side of :mod:`prewarm.up.prometheus` (which writes the OpenMetrics counter, runs
``promtool tsdb create-blocks-from openmetrics`` and starts ``prometheus``, also for
``prewarm up``): finding the binaries and context managers that stop the server after the test.
Must not: skip. A missing binary fails the test loudly and says how to install it
(``hack/testenv.sh``, which runs ``hack/testenv.d/10-prometheus.sh``).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.errors import FailedPrecondition
from forecaster.types import SeriesBatch
from prewarm.up import prometheus as up_prometheus
from prewarm.up.processes import free_port
from prewarm.up.prometheus import METRIC, write_openmetrics
from prewarm.up.testenv import env_value

__all__ = ["METRIC", "free_port", "write_openmetrics"]


def binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; fails the test when either is missing."""
    found = []
    for name, env in (
        ("prometheus", "PREWARM_PROMETHEUS_BIN"),
        ("promtool", "PREWARM_PROMTOOL_BIN"),
    ):
        path = env_value(env) or shutil.which(name)
        if not path or not Path(path).exists():
            pytest.fail(
                f"{name} is not installed: run ./hack/testenv.sh (installs Debian's prometheus) "
                f"or set {env}",
                pytrace=False,
            )
        found.append(path)
    return found[0], found[1]


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
    try:
        up_prometheus.backfill(promtool, source, data, timeout_s=120)
        server = up_prometheus.start_prometheus(
            prometheus,
            workdir,
            data_dir=data,
            web_config=web_config,
            ready_context=ready_context,
            ready_headers=ready_headers,
        )
    except FailedPrecondition as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield RunningPrometheus(url=server.url, data_dir=data)
    finally:
        server.stop()


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
    try:
        up_prometheus.wait_ready(
            url,
            alive=lambda: process.poll() is None,
            log=log,
            timeout_s=timeout_s,
            context=context,
            headers=headers,
        )
    except FailedPrecondition as error:
        pytest.fail(str(error), pytrace=False)
