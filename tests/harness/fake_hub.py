"""A FAKE Hugging Face Hub on 127.0.0.1: the Hub cannot run here, so this speaks its protocol.

Owns two (or more) real HTTP servers on loopback ports:

- the fake Hub: ``GET /api/models/{org}/{name}/revision/{revision}?blobs=true`` answers the JSON
  the Hub answers (``sha``, ``siblings: [{rfilename, size, blobId, lfs?}]``), with the Hub's error
  headers (``X-Error-Code: RevisionNotFound`` / ``RepositoryNotFound`` / ``GatedRepo``);
  ``GET /{org}/{name}/resolve/{commit}/{path}`` serves small (git) files itself and answers LFS
  files with a 302 to the CDN, as the Hub does;
- a fake CDN: serves LFS blobs by sha256, with Range support; it never needs a token.

Every request is recorded (server, path, headers) so tests can see where a token went. Private
repositories want ``Authorization: Bearer <token>``. Must not: reach the network, or pretend to be
anything but a fake.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

import pytest


def git_blob_sha1(data: bytes) -> str:
    """Git's blob id of ``data``: sha1 of ``b"blob <size>\\0" + data``."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The pointer file git stores for an LFS file (its blobId is this file's blob sha1)."""
    oid = hashlib.sha256(data).hexdigest()
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
    return text.encode()


@dataclass
class FakeRepo:
    """One model repository with one commit; ``branches`` name it (``main`` by default)."""

    files: dict[str, bytes]
    lfs: frozenset[str] = frozenset()
    private: bool = False
    gated: bool = False
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def commit(self) -> str:
        hasher = hashlib.sha1(usedforsecurity=False)
        for path in sorted(self.files):
            hasher.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        return hasher.hexdigest()

    def siblings(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for path, data in self.files.items():
            if path in self.lfs:
                pointer = lfs_pointer(data)
                out.append({
                    "rfilename": path, "size": len(data), "blobId": git_blob_sha1(pointer),
                    "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                            "pointerSize": len(pointer)},
                })  # fmt: skip
            else:
                out.append({"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)})
        return out


@dataclass(frozen=True)
class Seen:
    """One request a fake server received."""

    server: str
    method: str
    path: str
    headers: dict[str, str]


class FakeHub:
    """The fake Hub's state; tests add repositories and read ``seen``."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, FakeRepo] = {}
        self.seen: list[Seen] = []
        self.blobs: dict[str, bytes] = {}
        """sha256 -> content the CDN serves (tests may replace one to corrupt it)."""
        self.endpoint = ""
        self.cdn_endpoint = ""
        self.redirect_base: str | None = None
        """Where LFS resolves redirect (default: the CDN); tests point it elsewhere."""
        self.served_override: dict[str, bytes] = {}
        """path -> bytes the Hub serves for a small file instead of the listed content."""
        self._lock = threading.Lock()

    def add_repo(self, repo_id: str, repo: FakeRepo) -> str:
        """Add ``repo`` under ``repo_id``; returns its commit."""
        repo.branches.setdefault("main", repo.commit)
        self.repos[repo_id] = repo
        for path in repo.lfs:
            data = repo.files[path]
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return repo.commit

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def requests_to(self, server: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.server == server]


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        with suppress(BrokenPipeError, ConnectionResetError):
            handler.wfile.write(body)


def _send_ranged(handler: BaseHTTPRequestHandler, data: bytes, etag: str) -> None:
    header = handler.headers.get("Range")
    if not header:
        _send(handler, 200, data, ETag=etag, Accept_Ranges="bytes")
        return
    first_s, _, last_s = header.removeprefix("bytes=").partition("-")
    first = int(first_s)
    last = min(int(last_s) if last_s else len(data) - 1, len(data) - 1)
    if first >= len(data):
        _send(handler, 416, b"", Content_Range=f"bytes */{len(data)}")
        return
    _send(handler, 206, data[first : last + 1], ETag=etag,
          Content_Range=f"bytes {first}-{last}/{len(data)}")  # fmt: skip


def _hub_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hub.record(Seen("hub", "GET", self.path, dict(self.headers.items())))
            path = urlsplit(self.path).path
            if path.startswith("/api/models/"):
                self._api(path.removeprefix("/api/models/"))
            else:
                self._resolve(path)

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            authorized = self.headers.get("Authorization") == f"Bearer {hub.token}"
            if repo is None or (repo.private and not authorized):
                _send(self, 401, b'{"error":"Repository Not Found"}',
                      X_Error_Code="RepositoryNotFound",
                      X_Error_Message="Repository not found")  # fmt: skip
                return None
            if repo.gated and not authorized:
                _send(self, 401, b"{}", X_Error_Code="GatedRepo",
                      X_Error_Message="Access to this model is restricted")  # fmt: skip
                return None
            return repo

        def _api(self, rest: str) -> None:
            # {org}/{name}/revision/{revision}; the revision is %-encoded when it has a '/'.
            parts = rest.split("/")
            if len(parts) != 4 or parts[2] != "revision":
                _send(self, 404, b"{}")
                return
            repo = self._repo(f"{parts[0]}/{parts[1]}")
            if repo is None:
                return
            revision = unquote(parts[3])
            commit = repo.branches.get(revision, revision)
            if commit != repo.commit:
                _send(self, 404, b'{"error":"Invalid rev id"}', X_Error_Code="RevisionNotFound",
                      X_Error_Message=f"Invalid rev id: {revision}")  # fmt: skip
                return
            body = json.dumps({"id": f"{parts[0]}/{parts[1]}", "sha": commit,
                               "siblings": repo.siblings()}).encode()  # fmt: skip
            _send(self, 200, body, Content_Type="application/json")

        def _resolve(self, path: str) -> None:
            # /{org}/{name}/resolve/{commit}/{file path}
            parts = path.lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                _send(self, 404, b"", X_Error_Code="EntryNotFound")
                return
            repo = self._repo(f"{parts[0]}/{parts[1]}")
            if repo is None:
                return
            file_path = unquote("/".join(parts[4:]))
            if parts[3] != repo.commit or file_path not in repo.files:
                _send(self, 404, b"", X_Error_Code="EntryNotFound")
                return
            data = repo.files[file_path]
            if file_path in repo.lfs:
                oid = hashlib.sha256(data).hexdigest()
                base = hub.redirect_base or hub.cdn_endpoint
                location = f"{base}/repos/{oid}?Expires=9999999999&Signature=fake"
                _send(self, 302, b"", Location=location, X_Linked_Size=str(len(data)),
                      X_Linked_Etag=f'"{oid}"')  # fmt: skip
                return
            served = hub.served_override.get(file_path, data)
            _send_ranged(self, served, f'"{git_blob_sha1(data)}"')

    return Handler


def _cdn_handler(hub: FakeHub, name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hub.record(Seen(name, "GET", self.path, dict(self.headers.items())))
            oid = urlsplit(self.path).path.rsplit("/", 1)[-1]
            data = hub.blobs.get(oid)
            if data is None:
                _send(self, 404, b"")
                return
            _send_ranged(self, data, f'"{oid}"')

    return Handler


@contextmanager
def serve_fake_hub(*, token: str | None = None) -> Iterator[tuple[FakeHub, str]]:
    """Start the fake Hub, its CDN and an "other" host (a CDN that is not allowed), all on
    127.0.0.1; yields the hub and the other host's base URL."""
    hub = FakeHub(token=token)
    servers = [
        ThreadingHTTPServer(("127.0.0.1", 0), _hub_handler(hub)),
        ThreadingHTTPServer(("127.0.0.1", 0), _cdn_handler(hub, "cdn")),
        ThreadingHTTPServer(("127.0.0.1", 0), _cdn_handler(hub, "other")),
    ]
    threads = []
    for server in servers:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        threads.append(thread)
    hub.endpoint = f"http://127.0.0.1:{servers[0].server_address[1]}"
    hub.cdn_endpoint = f"http://127.0.0.1:{servers[1].server_address[1]}"
    other = f"http://127.0.0.1:{servers[2].server_address[1]}"
    try:
        yield hub, other
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def fake_hub() -> Iterator[tuple[FakeHub, str]]:
    """A started :class:`FakeHub` (token ``hf_test_token``) and the base URL of a host that is
    not an allowed redirect target."""
    with serve_fake_hub(token="hf_test_token") as started:
        yield started


def hub_uri(repo_id: str, revision: str, path: str = "") -> str:
    """``hf://repo_id@revision[/path]`` with the revision %-encoded."""
    tail = f"/{path}" if path else ""
    return f"hf://{repo_id}@{quote(revision, safe='')}{tail}"
