"""https:// (and http:// on loopback) sources with headers from a Secret file and redirects only
to allowed hosts, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.errors import FailedPrecondition, PermissionDenied
from gpu_agent.config import RemoteSourcesConfig
from gpu_agent.control import LoadControl
from gpu_agent.remote.http import _check_redirect, host_allowed, read_header_file
from gpu_agent.remote.http import origin as origin_of
from gpu_agent.sources import Fetcher, SourcePolicy

DATA = bytes(range(251)) * 9000  # ~2.2 MB: three ranges of 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()


class Server:
    """A real HTTP server: ``/file`` (Range unless ``ranges`` is off, ETag), ``/go`` redirects to
    ``redirect_to + /file``; every request's headers are kept."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.redirect_to = ""
        self.ranges = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.seen.append(dict(self.headers.items()))
                if self.path == "/go":
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to + "/file")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                first, last, status = 0, len(DATA) - 1, 200
                if (header := self.headers.get("Range")) and server.ranges:
                    start, _, end = header.removeprefix("bytes=").partition("-")
                    first, last, status = int(start), min(int(end), len(DATA) - 1), 206
                body = DATA[first : last + 1]
                self.send_response(status)
                self.send_header("ETag", '"v1"')
                if status == 206:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.base = f"http://{self.host}"


@contextmanager
def servers(count: int) -> Iterator[list[Server]]:
    started = [Server() for _ in range(count)]
    for server in started:
        threading.Thread(target=server.httpd.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield started
    finally:
        for server in started:
            server.httpd.shutdown()
            server.httpd.server_close()


def fetch(config: RemoteSourcesConfig | None, uri: str, dest: Path) -> tuple[int, str]:
    policy = SourcePolicy(["http"], file_roots=[], http_prefixes=["http://127.0.0.1:"],
                          require_sha256=True, remote=config)  # fmt: skip
    fetcher = Fetcher(parallel_ranges=3, range_bytes=1024**2, timeout_s=10, remote=config)
    return fetcher.fetch(
        policy.check(uri, SHA), dest, control=LoadControl(), progress=lambda _: None
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def header_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secret" / "headers"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_headers_from_a_secret_file_go_to_their_host(tmp_path: Path) -> None:
    secret = header_file(tmp_path, "# a comment\nAuthorization: Bearer s3cr3t\nX-Api-Key:  k1 \n")
    with servers(2) as (origin, other):
        config = RemoteSourcesConfig.model_validate(
            {"https": {"header_files": {origin.host: str(secret), "unrelated.example": "/none"}}}
        )
        assert fetch(config, origin.base + "/file", tmp_path / "out" / "w") == (len(DATA), SHA)
        fetch(config, other.base + "/file", tmp_path / "out" / "x")
    assert len(origin.seen) == 3  # three ranges
    assert all(h["Authorization"] == "Bearer s3cr3t" for h in origin.seen)
    assert all(h["X-Api-Key"] == "k1" for h in origin.seen)
    assert all("Authorization" not in h and "X-Api-Key" not in h for h in other.seen)
    assert (tmp_path / "out" / "w").read_bytes() == DATA


def test_a_redirect_to_an_allowed_host_is_followed_without_the_headers(tmp_path: Path) -> None:
    secret = header_file(tmp_path, "Authorization: Bearer s3cr3t\n")
    with servers(2) as (origin, cdn):
        origin.redirect_to = cdn.base
        config = RemoteSourcesConfig.model_validate(
            {"https": {"header_files": {origin.host: str(secret)},
                       "allowed_redirect_hosts": [cdn.host]}}
        )  # fmt: skip
        assert fetch(config, origin.base + "/go", tmp_path / "w") == (len(DATA), SHA)
    assert origin.seen
    assert all(h["Authorization"] == "Bearer s3cr3t" for h in origin.seen)
    assert len(cdn.seen) == 3
    assert all("Authorization" not in h for h in cdn.seen)


def test_redirects_are_refused_unless_allowed(tmp_path: Path) -> None:
    with servers(2) as (origin, elsewhere):
        origin.redirect_to = elsewhere.base
        with pytest.raises(PermissionDenied, match="not an allowed redirect host"):
            fetch(RemoteSourcesConfig(), origin.base + "/go", tmp_path / "w")
        with pytest.raises(PermissionDenied, match="allowed: none"):
            fetch(None, origin.base + "/go", tmp_path / "w")  # no remote settings: as before
        other_port = RemoteSourcesConfig.model_validate(
            {"https": {"allowed_redirect_hosts": ["127.0.0.1:1"]}}
        )
        with pytest.raises(PermissionDenied, match="not an allowed redirect host"):
            fetch(other_port, origin.base + "/go", tmp_path / "w")
    assert elsewhere.seen == []
    assert leftovers(tmp_path) == []


def test_plain_http_needs_no_remote_settings(tmp_path: Path) -> None:
    with servers(1) as (origin,):
        assert fetch(None, origin.base + "/file", tmp_path / "w") == (len(DATA), SHA)


def test_a_server_that_ignores_ranges_is_read_in_one_stream(tmp_path: Path) -> None:
    with servers(1) as (origin,):
        origin.ranges = False
        assert fetch(RemoteSourcesConfig(), origin.base + "/file", tmp_path / "w") == (
            len(DATA), SHA,
        )  # fmt: skip
    assert len(origin.seen) == 1
    assert (tmp_path / "w").read_bytes() == DATA


def test_a_redirect_from_https_to_http_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="from https to http"):
        _check_redirect(
            "https://hub.example/a", "http://cdn.example/b", start=origin_of("https://hub.example/a"),
            redirect_hosts=["cdn.example"],
        )  # fmt: skip


def test_a_malformed_header_file_is_a_precondition_error_that_hides_the_secret(
    tmp_path: Path,
) -> None:
    secret = header_file(tmp_path, "Authorization Bearer s3cr3t\n")
    with servers(1) as (origin,):
        config = RemoteSourcesConfig.model_validate(
            {"https": {"header_files": {origin.host: str(secret)}}}
        )
        with pytest.raises(FailedPrecondition, match="line 1: expected 'Name: value'") as error:
            fetch(config, origin.base + "/file", tmp_path / "out" / "w")
        assert "s3cr3t" not in str(error.value)
        missing = RemoteSourcesConfig.model_validate(
            {"https": {"header_files": {origin.host: str(tmp_path / "absent")}}}
        )
        with pytest.raises(FailedPrecondition, match="mount the Secret"):
            fetch(missing, origin.base + "/file", tmp_path / "out" / "w")
    assert origin.seen == []
    assert leftovers(tmp_path / "out") == []


def test_header_file_values_keep_colons(tmp_path: Path) -> None:
    path = header_file(tmp_path, "X-Signed: a:b:c\n\n")
    assert read_header_file(str(path), host="h") == {"X-Signed": "a:b:c"}


@pytest.mark.parametrize(
    ("url", "patterns", "allowed"),
    [
        ("https://cdn-lfs.hf.co/x", ["cdn-lfs.hf.co"], True),
        ("https://cdn-lfs-us-1.hf.co/x", ["*.hf.co"], True),
        ("https://hf.co/x", ["*.hf.co"], False),
        ("https://evilhf.co/x", ["*.hf.co"], False),
        ("https://cdn.example:8443/x", ["cdn.example:8443"], True),
        ("https://cdn.example/x", ["cdn.example:8443"], False),
        ("https://CDN.Example/x", ["cdn.example"], True),
    ],
)
def test_redirect_host_patterns(url: str, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(url, patterns) is allowed


def test_bad_https_settings_name_the_setting() -> None:
    with pytest.raises(ValueError, match=r"remote\.https\.header_files"):
        RemoteSourcesConfig.model_validate({"https": {"header_files": {"http://h/": "/x"}}})
    with pytest.raises(ValueError, match=r"remote\.https\.allowed_redirect_hosts"):
        RemoteSourcesConfig.model_validate({"https": {"allowed_redirect_hosts": ["a b"]}})
