"""A real S3-compatible server for tests: MinIO, built by ``hack/testenv.d/30-s3.sh``.

Owns: starting ``minio server`` on a free 127.0.0.1 port with a temporary data directory and fixed
test credentials, waiting until it is ready, creating buckets and uploading objects (requests
presigned with the agent's own SigV4 code, which MinIO then checks; no boto3), a TCP relay that
can cut a download after some bytes (a dropped connection, for resume tests), and stopping it all.

Must not: download anything, skip when the binary is missing (the tests FAIL with a message naming
``hack/testenv.sh``, like the other real components), or share state between test sessions.
The binary comes from ``PREWARM_S3_SERVER_BIN`` (``hack/testenv.sh`` writes it to
``hack/testenv.env``; when it is not in the environment that file is read directly).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import pytest
import requests

from gpu_agent.config import S3SourcesConfig
from gpu_agent.remote import sigv4
from prewarm.up.processes import free_port
from tests.harness.k8s import testenv_value

VARIABLE = "PREWARM_S3_SERVER_BIN"
ACCESS_KEY = "prewarm-test"
SECRET_KEY = "prewarm-test-secret-key"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0


def server_binary() -> Path:
    """The MinIO binary; fails the test (never skips) when it is not built."""
    value = testenv_value(VARIABLE)
    if not value or not os.access(value, os.X_OK):
        pytest.fail(
            f"{VARIABLE} is not set to an executable ({value!r}): run ./hack/testenv.sh once "
            "(hack/testenv.d/30-s3.sh builds MinIO into ~/.cache/prewarm-testenv)",
            pytrace=False,
        )
    return Path(value)


@dataclass
class RunningS3:
    """A started server: its endpoint, credentials and data directory."""

    endpoint: str
    data_dir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = field(default=SECRET_KEY, repr=False)
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def credentials(self) -> sigv4.Credentials:
        return sigv4.Credentials(self.access_key, self.secret_key, origin="the test harness")

    def _url(
        self,
        method: str,
        bucket: str,
        key: str = "",
        *,
        signed_headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> str:
        base = f"{self.endpoint}/{bucket}/{sigv4.encode_key(key)}"
        return sigv4.presign_url(
            method, base, self.credentials(), region=REGION, now=dt.datetime.now(dt.UTC),
            expires_s=600, signed_headers=signed_headers, query=query,
        )  # fmt: skip

    def create_bucket(self, bucket: str) -> None:
        # A loaded machine can answer the readiness probe before MinIO has finished initialising
        # its storage: that answer is XMinioServerNotInitialized, worth a short retry.
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            response = self.session.put(self._url("PUT", bucket), timeout=30)
            starting = "XMinioServerNotInitialized" in response.text
            if not starting or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert response.status_code == 200, response.text

    def put(self, bucket: str, key: str, data: bytes, *, with_sha256: bool = False) -> str:
        """Upload ``data``; with ``with_sha256`` it is stored with its SHA256 checksum (as
        ``aws s3 cp --checksum-algorithm SHA256`` does). Returns its sha256 (hex)."""
        digest = hashlib.sha256(data).digest()
        headers = {}
        if with_sha256:
            headers["x-amz-checksum-sha256"] = base64.b64encode(digest).decode()
        url = self._url("PUT", bucket, key, signed_headers=headers)
        response = self.session.put(url, data=data, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        return digest.hex()

    def delete(self, bucket: str, key: str) -> None:
        response = self.session.delete(self._url("DELETE", bucket, key), timeout=30)
        assert response.status_code == 204, response.text

    def config(self, **overrides: object) -> S3SourcesConfig:
        """Settings that reach this server (path-style); credentials from ``overrides`` or the
        test's environment."""
        values: dict[str, object] = {"endpoint": self.endpoint, "region": REGION}
        values.update(overrides)
        return S3SourcesConfig.model_validate(values)

    def assume_role(self, duration_s: int = 900) -> dict[str, str]:
        """Temporary credentials from the server's STS ``AssumeRole`` (as an environment with
        ``AWS_SESSION_TOKEN``). STS wants header authentication, signed here for service sts."""
        body = f"Action=AssumeRole&Version=2011-06-15&DurationSeconds={duration_s}".encode()
        now = dt.datetime.now(dt.UTC)
        amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        host = self.endpoint.removeprefix("http://")
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        names = ";".join(sorted(headers))
        canonical = "\n".join(["POST", "/", "", *(f"{k}:{headers[k]}" for k in sorted(headers)),
                               "", names, payload])  # fmt: skip
        scope = f"{date}/{REGION}/sts/aws4_request"
        to_sign = "\n".join([sigv4.ALGORITHM, amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])  # fmt: skip
        key = sigv4.signing_key(self.secret_key, date=date, region=REGION, service="sts")
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        authorization = (f"{sigv4.ALGORITHM} Credential={self.access_key}/{scope}, "
                         f"SignedHeaders={names}, Signature={signature}")  # fmt: skip
        response = self.session.post(
            self.endpoint + "/", data=body, timeout=30,
            headers={"X-Amz-Date": amz_date, "X-Amz-Content-Sha256": payload,
                     "Content-Type": "application/x-www-form-urlencoded",
                     "Authorization": authorization},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        root = ElementTree.fromstring(response.content)
        values = {el.tag.rsplit("}", 1)[-1]: el.text or "" for el in root.iter()}
        return {
            "AWS_ACCESS_KEY_ID": values["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": values["SecretAccessKey"],
            "AWS_SESSION_TOKEN": values["SessionToken"],
        }

    def environ(self) -> dict[str, str]:
        """An environment holding this server's credentials (what a pod would get)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


def _wait_ready(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"minio exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{endpoint}/minio/health/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"minio did not become ready in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@contextmanager
def run_s3_server(extra_env: dict[str, str] | None = None) -> Iterator[RunningS3]:
    """Start MinIO on 127.0.0.1 (a free port) with a temporary data directory; stop it after.

    ``extra_env`` adds MinIO settings (e.g. ``MINIO_IDENTITY_OPENID_*`` for web identity)."""
    binary = server_binary()
    with tempfile.TemporaryDirectory(prefix="prewarm-s3-") as scratch:
        root = Path(scratch)
        data_dir = root / "data"
        data_dir.mkdir()
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "MINIO_ROOT_USER": ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": SECRET_KEY,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "on",
            "MINIO_REGION": REGION,
            **(extra_env or {}),
        }
        log = root / "minio.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(binary), "server", "--quiet", "--address", f"127.0.0.1:{port}",
                 "--certs-dir", str(root / "certs"), str(data_dir)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait_ready(endpoint, process, log)
            yield RunningS3(endpoint, data_dir)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[RunningS3]:
    """One MinIO for the session (it takes a second or two to start)."""
    with run_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: RunningS3, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for this test."""
    digest = hashlib.sha1(request.node.nodeid.encode(), usedforsecurity=False).hexdigest()[:12]
    bucket = f"test-{digest}-{int(time.monotonic_ns()) % 10**6}"
    s3_server.create_bucket(bucket)
    return bucket


class CuttingRelay:
    """A TCP relay on 127.0.0.1 to ``upstream``: it forwards both ways and, once ``budget`` bytes
    went from the server to the client over all connections, closes every connection (and any
    new one) until :meth:`heal` is called. ``passed`` counts server-to-client bytes."""

    def __init__(self, upstream: tuple[str, int], budget: int | None = None) -> None:
        self.upstream = upstream
        self.budget = budget
        self.passed = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def heal(self) -> None:
        with self._lock:
            self.budget = None
            self.passed = 0

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _cut(self) -> bool:
        return self.budget is not None and self.passed >= self.budget

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            for src, dst, down in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if down:
                    with self._lock:
                        if self.budget is not None:
                            data = data[: max(0, self.budget - self.passed)]
                        self.passed += len(data)
                    if data:
                        dst.sendall(data)
                    if self._cut():
                        break
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@contextmanager
def cutting_relay(endpoint: str, budget: int | None = None) -> Iterator[CuttingRelay]:
    """A :class:`CuttingRelay` in front of ``endpoint`` (``http://host:port``)."""
    host, _, port = endpoint.removeprefix("http://").partition(":")
    relay = CuttingRelay((host, int(port)), budget)
    try:
        yield relay
    finally:
        relay.close()
