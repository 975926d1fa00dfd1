"""Log lines carry their fields (console and JSON); urllib3's retries against an unreachable
endpoint are one warning, periodic counts and one line when it answers again (real urllib3, a
real HTTP server on loopback)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import structlog
import urllib3

from common.errors import InvalidInput
from prewarm.logging import configure_logging
from prewarm.retry_logs import URLLIB3_LOGGER, RetryFolder
from prewarm.up.processes import free_port


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pool = logging.getLogger(URLLIB3_LOGGER)
    pool_filters, pool_level = pool.filters[:], pool.level
    yield
    root.handlers[:], root.level = handlers, level
    pool.filters[:], pool.level = pool_filters, pool_level


def _emit() -> None:
    logging.getLogger("tests.stdlib").info(
        "gpu agent serving", extra={"address": "0.0.0.0:50061", "gpu_reason": "no NVML here"}
    )
    structlog.get_logger("tests.structlog").warning("lease round failed", failures=2)


def test_console_lines_carry_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    _emit()
    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith(
        ' info    gpu agent serving  address=0.0.0.0:50061 gpu_reason="no NVML here"'
    )
    assert first.split(" ")[0].endswith("Z")  # an ISO-8601 UTC time first
    assert second.endswith(" warning lease round failed  failures=2")


def test_json_lines_carry_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_format=True)
    _emit()
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["event"] == "gpu agent serving"
    assert first["address"] == "0.0.0.0:50061"
    assert first["gpu_reason"] == "no NVML here"
    assert (first["level"], first["logger"]) == ("info", "tests.stdlib")
    assert second["failures"] == 2
    assert (second["level"], second["logger"]) == ("warning", "tests.structlog")


def test_an_exception_is_in_the_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_format=True)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("tests").exception("failed")
    (line,) = capsys.readouterr().err.splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_an_unknown_level_is_bad_input() -> None:
    with pytest.raises(InvalidInput, match="debug, info, warning, error"):
        configure_logging("loud")


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


def test_retries_are_folded_per_outage_and_the_recovery_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # released: nothing listens there now
    mono = [0.0]
    folder = RetryFolder(level=logging.INFO, summary_interval_s=60.0, monotonic=lambda: mono[0])
    folder.name_host("127.0.0.1", "kube-apiserver")
    pool = logging.getLogger(URLLIB3_LOGGER)
    pool.filters[:] = [folder]
    pool.setLevel(logging.DEBUG)
    http = urllib3.PoolManager(retries=urllib3.Retry(total=3, backoff_factor=0))
    url = f"http://127.0.0.1:{port}/healthz"

    def attempt() -> None:
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            http.request("GET", url)

    def said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == URLLIB3_LOGGER]

    attempt()  # 3 retries: the first said, two counted
    (first,) = said()
    assert first.levelno == logging.WARNING
    assert first.getMessage().startswith("kube-apiserver unreachable; retrying")
    assert "Connection refused" in first.__dict__["error"]
    attempt()  # within the summary interval: nothing said
    assert len(said()) == 1
    mono[0] += 61
    attempt()  # the interval passed: one count (7th retry), then quiet again
    summary = said()[1]
    assert summary.getMessage().startswith("kube-apiserver unreachable: 7 retries since ")
    assert summary.__dict__["retries"] == 7
    assert len(said()) == 2

    server = HTTPServer(("127.0.0.1", port), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert http.request("GET", url).status == 200
        assert http.request("GET", url).status == 200  # a second answer says nothing
    finally:
        server.shutdown()
        server.server_close()
    recovered = said()[2:]
    assert [r.getMessage() for r in recovered] == [
        f"kube-apiserver answers again after 9 retries since {summary.__dict__['since']}"
    ]
    # urllib3's DEBUG lines (connections, responses) stay below the configured level.
    assert all(r.levelno >= logging.INFO for r in caplog.records)
