"""A real HTTP server on 127.0.0.1 serving files with Range support, optionally slowly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    root: Path
    delay_s: float
    block_bytes: int
    ranges_seen: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _target(self) -> Path | None:
        path = (self.root / self.path.lstrip("/").split("?")[0]).resolve()
        return path if path.is_file() and path.is_relative_to(self.root) else None

    def do_HEAD(self) -> None:
        target = self._target()
        if target is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        target = self._target()
        if target is None:
            self.send_error(404)
            return
        data = target.read_bytes()
        header = self.headers.get("Range")
        if header:
            self.ranges_seen.append(header)
            start_s, end_s = header.removeprefix("bytes=").split("-")
            start, end = int(start_s), min(int(end_s), len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for offset in range(0, len(body), self.block_bytes):
                self.wfile.write(body[offset : offset + self.block_bytes])
                self.wfile.flush()
                if self.delay_s:
                    time.sleep(self.delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def serve_files(
    root: Path, *, delay_s: float = 0.0, block_bytes: int = 64 * 1024
) -> Iterator[tuple[str, list[str]]]:
    """Serve ``root`` at the yielded base URL; ``delay_s`` sleeps after each block sent."""
    handler = type(
        "Handler",
        (_Handler,),
        {"root": root.resolve(), "delay_s": delay_s, "block_bytes": block_bytes,
         "ranges_seen": []},
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", handler.ranges_seen
    finally:
        server.shutdown()
        server.server_close()
