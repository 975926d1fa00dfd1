"""A real Prometheus that scrapes live targets on 127.0.0.1 (for dashboard and alert tests).

Owns: writing a scrape config for the given targets (1 s interval), starting ``prometheus`` on a
free port, waiting until ready, running instant queries, and stopping it. Must not: skip; a missing
binary fails the test (see :func:`tests.harness.prometheus.binaries`).
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.prometheus import _wait_ready, binaries, free_port, stop_process


@dataclass(frozen=True)
class ScrapingPrometheus:
    """A started server scraping ``targets``."""

    url: str

    def query(self, expr: str, *, at_s: float | None = None) -> dict[str, Any]:
        """``/api/v1/query`` for ``expr`` (at ``at_s`` epoch seconds when given); the JSON body."""
        params = {"query": expr}
        if at_s is not None:
            params["time"] = f"{at_s:.3f}"
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body: dict[str, Any] = json.loads(answer.read())
        except urllib.error.HTTPError as error:  # 400 for a query that does not parse
            body = json.loads(error.read())
        return body


@contextmanager
def scraping_prometheus(
    targets: Sequence[str], workdir: Path, *, lookback_s: int = 300
) -> Iterator[ScrapingPrometheus]:
    """Prometheus scraping ``targets`` (``host:port``) every second; stopped afterwards."""
    prometheus, _ = binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "prewarm", "static_configs": [{"targets": list(targets)}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log_path = workdir / "prometheus.log"
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--query.lookback-delta={lookback_s}s",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)  # type: ignore[arg-type]
        yield ScrapingPrometheus(url=url)
    finally:
        stop_process(process)
        log.close()
