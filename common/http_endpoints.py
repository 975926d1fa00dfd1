"""A tiny asyncio HTTP server for ``/healthz``, ``/readyz`` and ``/metrics``, nothing else.

Owns: answering probe and scrape requests. Must not: serve anything user-facing. Used by the daemon
and the GPU agent; the readiness and liveness checks are callables passed in, the metrics come from
the ``prometheus_client`` registry passed in. Only ``GET``/``HEAD`` on those three paths; anything
else is 404/405. Requests with headers over 16 KiB are refused (431).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_MAX_HEADER_BYTES = 16 * 1024
_READ_TIMEOUT_S = 5.0
_TOO_LARGE = ("431 Request Header Fields Too Large", "text/plain", b"headers too large\n", False)


class ProbeServer:
    """Serves probes and metrics on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        live: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
        detail: Callable[[], Sequence[str]] = tuple,
        host: str = "0.0.0.0",  # probes must be reachable from the kubelet
        port: int = 8080,
    ) -> None:
        self._registry = registry
        self._live = live
        self._ready = ready
        self._detail = detail
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("ProbeServer is not started")
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving in the background."""
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body, head_only = await self._respond(reader)
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(header if head_only else header + body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes, bool]:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return _TOO_LARGE
        if len(raw) > _MAX_HEADER_BYTES:
            return _TOO_LARGE
        request_line = raw.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request line\n", False
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n", False
        head_only = method == "HEAD"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry), head_only
        if path in ("/healthz", "/livez"):
            ok = self._live()
        elif path == "/readyz":
            ok = self._ready()
        else:
            return "404 Not Found", "text/plain", b"not found\n", head_only
        # Problems that do not stop the process (a misconfigured query) follow the verdict.
        problems = "".join(f"{line}\n" for line in self._detail()) if path == "/readyz" else ""
        if ok:
            return "200 OK", "text/plain", f"ok\n{problems}".encode(), head_only
        return "503 Service Unavailable", "text/plain", f"not ready\n{problems}".encode(), head_only
