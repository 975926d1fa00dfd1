"""A fake of the front door of Amazon Managed Service for Prometheus (and of Mimir's or Thanos's
tenant-checking gateway), in front of a real Prometheus.

A real Prometheus cannot check a SigV4 signature or a tenant header, so this loopback proxy does,
then forwards the request to the real server and relays its answer. Owns: verifying
``Authorization: AWS4-HMAC-SHA256 ...`` the way AWS does (its own canonical request, written here
from the SigV4 specification, independent of the code under test; the scope's date, region and
service; the clock skew; the access key), checking a tenant header, and recording every request.
Must not: be mistaken for AWS. Answers 403 with AWS's message for a bad signature or unknown key,
401 for a missing tenant.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote

MAX_SKEW = dt.timedelta(minutes=5)


@dataclass
class FakeAmpGateway:
    """What the gateway checks, and what it saw. Change ``secrets`` to rotate a key."""

    upstream: str
    region: str = "eu-west-1"
    service: str = "aps"
    secrets: dict[str, str] = field(default_factory=dict)
    """access key id -> secret access key; empty: no SigV4 check."""
    session_tokens: dict[str, str] = field(default_factory=dict)
    """access key id -> the session token its (temporary) credentials must carry."""
    tenant_header: str | None = None
    tenant: str | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    url: str = ""

    def check(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> str:
        """'' when the request may pass, else why not."""
        tenant_header = self.tenant_header
        if tenant_header is not None and headers.get(tenant_header.lower()) != self.tenant:
            return f"401 missing or wrong {tenant_header}"
        if self.secrets:
            return self._check_sigv4(method, raw_path, headers, body)
        return ""

    def _check_sigv4(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> str:
        authorization = headers.get("authorization", "")
        prefix = "AWS4-HMAC-SHA256 "
        if not authorization.startswith(prefix):
            return "403 Missing Authentication Token"
        fields = dict(
            part.strip().split("=", 1) for part in authorization[len(prefix) :].split(",")
        )
        key_id, date, region, service, terminal = fields["Credential"].split("/")
        secret = self.secrets.get(key_id)
        if secret is None:
            return "403 The security token included in the request is invalid."
        if (region, service, terminal) != (self.region, self.service, "aws4_request"):
            return f"403 Credential should be scoped to {self.region}/{self.service}"
        amz_date = headers.get("x-amz-date", "")
        stamp = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        if abs(dt.datetime.now(dt.UTC) - stamp) > MAX_SKEW or stamp.strftime("%Y%m%d") != date:
            return "403 Signature expired"
        expected_token = self.session_tokens.get(key_id)
        if expected_token is not None and headers.get("x-amz-security-token") != expected_token:
            return "403 The security token included in the request is invalid."
        names = fields["SignedHeaders"].split(";")
        if "host" not in names or "x-amz-date" not in names:
            return "403 host and x-amz-date must be signed"
        path, _, query = raw_path.partition("?")
        pairs = sorted(
            (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
            for k, v in parse_qsl(query, keep_blank_values=True)
        )
        canonical = "\n".join(
            [
                method,
                path,
                "&".join(f"{k}={v}" for k, v in pairs),
                "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in names),
                ";".join(names),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("AWS4" + secret).encode()
        for part in (date, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, fields["Signature"]):
            return (
                "403 The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method."
            )
        return ""


def _handler(gateway: FakeAmpGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet in tests
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            gateway.requests.append({"method": self.command, "path": self.path, **headers})
            refusal = gateway.check(self.command, self.path, headers, body)
            if refusal:
                gateway.refusals.append(refusal)
                status, _, message = refusal.partition(" ")
                payload = json.dumps({"message": message}).encode()
                self.send_response(int(status))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            forward = urllib.request.Request(
                gateway.upstream + self.path,
                data=body or None,
                method=self.command,
                headers={"Content-Type": headers.get("content-type", "text/plain")},
            )
            try:
                with urllib.request.urlopen(forward, timeout=30) as answer:
                    status, payload = answer.status, answer.read()
            except urllib.error.HTTPError as error:
                status, payload = error.code, error.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

    return Handler


@contextmanager
def running(gateway: FakeAmpGateway) -> Iterator[FakeAmpGateway]:
    """Serve ``gateway`` on 127.0.0.1 (``gateway.url``) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gateway))
    gateway.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gateway
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
