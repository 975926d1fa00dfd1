"""A fault-injecting HTTP proxy in front of the test kube-apiserver (127.0.0.1 only).

The actuator talks plain HTTP to the proxy; the proxy forwards every request over TLS to the real
apiserver with the admin client certificate, except requests matching a :class:`Fault` rule, which
get the rule's answer instead: an HTTP status with a Kubernetes ``Status`` body (429 with
``Retry-After``, 500, 503, ...), a dropped connection (before or after forwarding, so the request
may or may not have landed), or a hook that runs before forwarding (e.g. a concurrent write, so
the apiserver itself answers 409, or an apiserver restart). The real apiserver decides everything
that is forwarded; the proxy only adds the failures a busy or restarting control plane produces.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Action = Literal["status", "drop_before", "drop_after", "hook"]


@dataclass
class Fault:
    """Answer the next ``times`` requests whose method and path match with a failure."""

    method: str
    path_contains: str
    action: Action = "status"
    status: int = 503
    retry_after_s: int | None = None
    times: int = 1
    hook: Callable[[], None] | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.hits < self.times and method == self.method and self.path_contains in path


@dataclass
class FaultProxy:
    """Start with :meth:`start`; ``url`` is where clients connect; ``requests`` logs every one."""

    upstream: str
    pki: Path
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        upstream = urlsplit(self.upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return  # quiet

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._take(self.command, self.path)
                if fault is not None and fault.action == "status":
                    proxy._log(self.command, self.path, fault.status)
                    self._send_status(fault)
                    return
                if fault is not None and fault.action == "drop_before":
                    proxy._log(self.command, self.path, 0)
                    self.close_connection = True
                    return
                if fault is not None and fault.action == "hook" and fault.hook is not None:
                    fault.hook()
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "connection", "authorization", "content-length"}
                }
                try:
                    connection = http.client.HTTPSConnection(
                        upstream.hostname or "127.0.0.1", upstream.port, context=context, timeout=30
                    )
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    connection.close()
                except OSError:
                    # The apiserver is down: to the client, like an apiserver that reset the socket.
                    proxy._log(self.command, self.path, 0)
                    self.close_connection = True
                    return
                proxy._log(self.command, self.path, response.status)
                if fault is not None and fault.action == "drop_after":
                    self.close_connection = True  # landed upstream, but the answer is lost
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_status(self, fault: Fault) -> None:
                payload = json.dumps(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": f"injected by the test proxy ({fault.status})",
                        "code": fault.status,
                    }
                ).encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/json")
                if fault.retry_after_s is not None:
                    self.send_header("Retry-After", str(fault.retry_after_s))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def count(self, method: str, path_contains: str, status: int | None = None) -> int:
        """How many requests matching ``method``/``path_contains`` (and ``status``) were seen."""
        with self._lock:
            return sum(
                1
                for m, p, s in self.requests
                if m == method and path_contains in p and (status is None or s == status)
            )

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))
