"""A fake serving engine speaking vLLM's and SGLang's sleep contract over real HTTP on 127.0.0.1.

Named a fake: vLLM and SGLang need a GPU. It implements the endpoints' documented contract:
vLLM (``VLLM_SERVER_DEV_MODE=1``, ``--enable-sleep-mode``): ``POST /sleep?level=N`` (200, the
engine sleeps), ``POST /wake_up`` (200 once awake: it takes ``wake_s``), ``GET /is_sleeping`` ->
``{"is_sleeping": bool}``; SGLang: ``POST /release_memory_occupation`` and
``POST /resume_memory_occupation`` with a JSON body. Every call is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FakeEngine:
    """State and call log of one fake engine."""

    def __init__(self, *, wake_s: float) -> None:
        self.wake_s = wake_s
        self.asleep = False
        self.level = 0
        self.calls: list[str] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _handler(engine: FakeEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            del format, args

        def _answer(self, code: int, body: object | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            engine.calls.append(f"GET {self.path}")
            if urlsplit(self.path).path == "/is_sleeping":
                self._answer(200, {"is_sleeping": engine.asleep})
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            engine.calls.append(f"POST {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            url = urlsplit(self.path)
            if url.path in ("/sleep", "/release_memory_occupation"):
                engine.level = int(parse_qs(url.query).get("level", ["1"])[0])
                engine.asleep = True
                self._answer(200)
            elif url.path in ("/wake_up", "/resume_memory_occupation"):
                time.sleep(engine.wake_s)
                engine.asleep = False
                self._answer(200)
            else:
                self._answer(404, {"error": "not found"})

    return Handler


@contextmanager
def fake_engine(*, wake_s: float = 0.2) -> Iterator[FakeEngine]:
    """A running fake engine on a free port of 127.0.0.1."""
    engine = FakeEngine(wake_s=wake_s)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(engine))
    engine.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        server.shutdown()
        server.server_close()
