"""A fake Prometheus HTTP API that misbehaves on purpose (down, slow, 4xx/5xx, bad JSON).

Named a fake because it is one: it only answers ``/api/v1/query_range`` the way a broken server or
proxy would, to test the source's typed errors and retries. The real-server tests use the real
``prometheus`` binary (tests/harness/prometheus.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Behaviour:
    """What the fake does, per request in order; the last entry repeats."""

    answers: list[str]
    stall_s: float = 2.0
    samples: list[list[object]] = field(default_factory=list)
    """What the answer ``"samples"`` serves as the values of one series, model ``a``."""
    requests: int = 0
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    """The ``Authorization`` header of each request ('' when there was none)."""


def _matrix(result: list[dict[str, object]]) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}}
    ).encode()


def _good_body(query: dict[str, list[str]]) -> bytes:
    start = float(query["start"][0])
    end = float(query["end"][0])
    step = float(query["step"][0].rstrip("s"))
    values = []
    stamp = start
    while stamp <= end + 1e-9:
        values.append([stamp, "0.5"])
        stamp += step
    return _matrix([{"metric": {"model": "m1"}, "values": values}])


@contextmanager
def fake_prometheus(behaviour: Behaviour) -> Iterator[str]:
    """Serve ``behaviour`` on a free 127.0.0.1 port; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            index = min(behaviour.requests, len(behaviour.answers) - 1)
            behaviour.requests += 1
            query = parse_qs(urlparse(self.path).query)
            behaviour.queries.append(query)
            behaviour.authorizations.append(self.headers.get("Authorization", ""))
            answer = behaviour.answers[index]
            if answer == "stall":
                time.sleep(behaviour.stall_s)
                answer = "ok"
            if answer.startswith("status:"):
                code = int(answer.split(":", 1)[1])
                self._send(code, b'{"status":"error","error":"fake failure"}')
            elif answer == "garbage":
                self._send(200, b"<html>502 bad gateway</html>")
            elif answer == "partial":
                self._send(200, b'{"status":"success","data":{"resultType":"matrix","res')
            elif answer == "no-data":
                self._send(200, b'{"status":"success"}')
            elif answer == "samples":
                self._send(200, _matrix([{"metric": {"model": "a"}, "values": behaviour.samples}]))
            else:
                self._send(200, _good_body(query))

        def _send(self, code: int, body: bytes) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): that is the point of "stall"

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
