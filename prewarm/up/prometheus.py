"""A real Prometheus server on 127.0.0.1, with request history backfilled from a trace.

Owns: writing a :class:`SeriesBatch` as an OpenMetrics counter (``inference_requests_total``,
cumulative, so ``rate()`` over a step gives that step's count), building TSDB blocks from it with
``promtool tsdb create-blocks-from openmetrics``, starting ``prometheus`` on a free loopback port on
those blocks (with scrape targets, and optionally a ``--web.config.file``: basic auth, TLS, client
certificates), waiting until it answers ``/-/ready``, and stopping it. ``prewarm up`` and the test
harness (``tests/harness/prometheus.py``) both start Prometheus here. Must not: look for the
binaries itself (the caller passes them: :mod:`prewarm.up.testenv`).
"""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common.errors import FailedPrecondition
from forecaster.types import SeriesBatch
from prewarm.up.processes import ChildProcess, free_port

METRIC = "inference_requests_total"
"""The counter the default (custom) demand query reads: ``forecaster.config.DEFAULT_QUERY``."""


def write_openmetrics(
    batch: SeriesBatch,
    path: Path,
    *,
    label: str = "model",
    samples_per_step: int = 1,
    offsets: Sequence[float] | None = None,
) -> None:
    """``batch`` as a cumulative counter ``inference_requests_total{<label>=...}``.

    The sample at ``start_s`` is ``offsets[row]`` (default 0); the sample at the end of step ``j``
    adds the counts of steps ``<= j``. With ``samples_per_step`` > 1 each step's count is spread
    evenly over that many samples inside it (a scrape every ``step_s / samples_per_step``), so
    ``rate()`` over a step finds several samples whatever the range selector's boundaries.
    NaN steps count as 0.
    """
    lines = [f"# HELP {METRIC} Requests served.", f"# TYPE {METRIC} counter"]
    counts = np.nan_to_num(batch.counts)
    base = np.zeros(len(batch.models)) if offsets is None else np.asarray(offsets, dtype=float)
    cumulative = np.cumsum(counts, axis=1)
    fractions = np.arange(1, samples_per_step + 1) / samples_per_step
    # OpenMetrics wants the samples of one metric family grouped by series, in time order.
    for row, model in enumerate(batch.models):
        selector = f'{METRIC}{{{label}="{model}"}}'
        lines.append(f"{selector} {base[row]:.3f} {batch.start_s:.3f}")
        before = base[row]
        for step in range(batch.steps):
            step_start = batch.start_s + step * batch.step_s
            for fraction in fractions:
                value = before + counts[row, step] * fraction
                stamp = step_start + fraction * batch.step_s
                lines.append(f"{selector} {value:.3f} {stamp:.3f}")
            before = base[row] + cumulative[row, step]
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def backfill(
    promtool: Path | str,
    source: Path,
    data_dir: Path,
    *,
    timeout_s: float = 300,
    max_block_duration: str | None = None,
) -> None:
    """Build TSDB blocks under ``data_dir`` from the OpenMetrics file ``source`` (``# EOF``
    terminated); :class:`FailedPrecondition` with promtool's message when it refuses.

    ``max_block_duration`` (e.g. ``24h``; promtool's default is 2h) makes fewer, larger blocks:
    days of history then build in seconds (13 days of 16 series: 2 s instead of 20 s).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    duration = [f"--max-block-duration={max_block_duration}"] if max_block_duration else []
    command = [str(promtool), "tsdb", "create-blocks-from", "openmetrics", *duration]
    built = subprocess.run(
        [*command, str(source), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if built.returncode != 0:
        raise FailedPrecondition(f"promtool could not backfill: {built.stderr or built.stdout}")


@dataclass
class PrometheusServer:
    """A started server: its base URL, port, data directory and process."""

    url: str
    port: int
    data_dir: Path
    process: ChildProcess
    workdir: Path = field(default_factory=Path)

    def stop(self) -> None:
        """SIGTERM, wait up to 20 s, then SIGKILL: it never outlives its owner."""
        self.process.stop(timeout_s=20)


def start_prometheus(
    prometheus: Path | str,
    workdir: Path,
    *,
    data_dir: Path | None = None,
    scrape_configs: Sequence[dict[str, Any]] = (),
    scrape_interval: str = "1h",
    web_config: dict[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    ready_context: ssl.SSLContext | None = None,
    ready_headers: dict[str, str] | None = None,
    ready_timeout_s: float = 60,
) -> PrometheusServer:
    """Start Prometheus on ``data_dir`` (default ``workdir/tsdb``) scraping ``scrape_configs``;
    ready on return.

    Retention is 100 years: backfilled history is however old the trace is. ``web_config`` is
    written as ``--web.config.file`` (basic_auth_users, tls_server_config); the readiness probe
    then uses ``ready_context`` (TLS) and ``ready_headers`` (auth), and the URL is ``https`` when
    the config has TLS. :class:`FailedPrecondition` (with its log) when it does not get ready.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = data_dir if data_dir is not None else workdir / "tsdb"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    document = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": list(scrape_configs),
    }
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    port = free_port()
    args = [
        str(prometheus),
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=100y",
        *extra_args,
    ]
    scheme = "http"
    if web_config is not None:
        web = workdir / "web.yml"
        web.write_text(yaml.safe_dump(web_config), encoding="utf-8")
        args.append(f"--web.config.file={web}")
        if "tls_server_config" in web_config:
            scheme = "https"
    process = ChildProcess("prometheus", args, workdir / "prometheus.log")
    process.start()
    url = f"{scheme}://127.0.0.1:{port}"
    server = PrometheusServer(url=url, port=port, data_dir=data, process=process, workdir=workdir)
    try:
        wait_ready(
            url,
            alive=process.alive,
            log=process.log,
            timeout_s=ready_timeout_s,
            context=ready_context,
            headers=ready_headers,
        )
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(
    url: str,
    *,
    alive: Callable[[], bool],
    log: Path,
    timeout_s: float = 60,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``url/-/ready`` until it answers 200; :class:`FailedPrecondition` with the log's
    tail when the process exits (``alive()`` false) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise FailedPrecondition(f"prometheus exited: {tail}")
        try:
            request = urllib.request.Request(f"{url}/-/ready", headers=headers or {})
            with urllib.request.urlopen(request, timeout=2, context=context) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        time.sleep(0.2)
    raise FailedPrecondition(f"prometheus at {url} not ready after {timeout_s:.0f} s")
