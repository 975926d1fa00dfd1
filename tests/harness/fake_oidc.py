"""A fake OpenID Connect provider for tests: discovery document, JWKS and RS256-signed tokens.

Owns a test-generated RSA key (pure Python: the venv has no ``cryptography`` or PyJWT, and a test
key needs no constant-time arithmetic), an HTTP server on 127.0.0.1 that serves
``/.well-known/openid-configuration`` and ``/jwks`` (what MinIO reads to check a web identity
token), and :meth:`FakeOidc.token`, which signs a JWT with ``iss``, ``aud``, ``sub``, ``exp`` and
extra claims. Must not: issue tokens over HTTP (there is no login flow), or be used outside tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_E = 65537
# DER prefix of DigestInfo(sha256) in EMSA-PKCS1-v1_5 (RFC 8017 section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _probably_prime(n: int, rounds: int = 40) -> bool:
    if n < 4:
        return n in (2, 3)
    for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1  # top two bits: n has 2*bits
        if math.gcd(candidate - 1, _E) == 1 and _probably_prime(candidate):
            return candidate


@dataclass(frozen=True)
class RsaKey:
    """A test RSA key: modulus, private exponent and its JWKS key id."""

    n: int
    d: int
    kid: str

    @classmethod
    def generate(cls, bits: int = 2048) -> RsaKey:
        while True:
            p, q = _prime(bits // 2), _prime(bits // 2)
            if p != q:
                break
        d = pow(_E, -1, (p - 1) * (q - 1))
        n = p * q
        return cls(n, d, hashlib.sha256(str(n).encode()).hexdigest()[:16])

    def jwk(self) -> dict[str, str]:
        return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                "n": _int_b64url(self.n), "e": _int_b64url(_E)}  # fmt: skip

    def sign_rs256(self, message: bytes) -> bytes:
        size = (self.n.bit_length() + 7) // 8
        digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        padded = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
        return pow(int.from_bytes(padded, "big"), self.d, self.n).to_bytes(size, "big")


class FakeOidc:
    """An OpenID provider on 127.0.0.1: :attr:`issuer`, :attr:`discovery_url`, :meth:`token`."""

    def __init__(self, *, audience: str = "prewarm-agent") -> None:
        self.audience = audience
        self.key = RsaKey.generate()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.discovery_url = f"{self.issuer}/.well-known/openid-configuration"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        oidc = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = oidc.discovery()
                elif self.path == "/jwks":
                    body = {"keys": [oidc.key.jwk()]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def discovery(self) -> dict[str, object]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "response_types_supported": ["code", "id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
            "claims_supported": ["sub", "aud", "iss", "exp", "policy"],
        }

    def token(self, *, lifetime_s: int = 3600, key: RsaKey | None = None, **claims: object) -> str:
        """A JWT for ``system:serviceaccount:prewarm:agent`` signed with this provider's key (or
        ``key``); ``claims`` add to or replace the standard ones."""
        key = key or self.key
        now = int(time.time())
        payload: dict[str, object] = {
            "iss": self.issuer, "aud": self.audience, "sub": "system:serviceaccount:prewarm:agent",
            "iat": now, "nbf": now - 5, "exp": now + lifetime_s,
        }  # fmt: skip
        payload.update(claims)
        header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(payload).encode())
        )
        return signing_input + "." + _b64url(key.sign_rs256(signing_input.encode("ascii")))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def run_fake_oidc(*, audience: str = "prewarm-agent") -> Iterator[FakeOidc]:
    """A started :class:`FakeOidc`, stopped after."""
    oidc = FakeOidc(audience=audience)
    oidc.start()
    try:
        yield oidc
    finally:
        oidc.stop()
