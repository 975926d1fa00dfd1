"""AWS Signature Version 4 for S3, as presigned URLs (query-string authentication).

Owns the canonical request, the string to sign, the signing-key chain and the query parameters of
a presigned URL. Pure: the time is an argument, nothing is sent. Every S3 request the agent makes
(GET of an object, HEAD, ListObjectsV2) is a presigned URL, so this is the only signer; the
payload is never signed (``UNSIGNED-PAYLOAD``), as S3 allows for query-string authentication.

Reference: "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)" in the S3 API
documentation; :func:`presign_url` reproduces its worked example (see the tests).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES_S = 7 * 24 * 3600
"""SigV4 presigned URLs live at most 7 days."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair, with the session token of temporary (STS) credentials when present."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    origin: str = ""
    """Where they were read from, for error messages (never the secret itself)."""


def _encode(value: str, *, keep_slash: bool = False) -> str:
    # SigV4's URI encoding: every byte but the unreserved A-Z a-z 0-9 - _ . ~ is %XX (uppercase);
    # in an S3 path '/' stays as is (and the path is encoded once, not twice as other services do).
    return quote(value, safe="/-_.~" if keep_slash else "-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Parameters sorted by encoded name, each ``name=value`` encoded, joined by ``&``."""
    pairs = sorted((_encode(k), _encode(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets in the Host header
        host = f"[{host}]"
    port = parts.port
    # HTTP clients leave a scheme's default port out of the Host header; so must the signature.
    if port is None or (parts.scheme, port) in (("https", 443), ("http", 80)):
        return host
    return f"{host}:{port}"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_access_key: str, *, date: str, region: str, service: str) -> bytes:
    """``kSigning`` of the date/region/service scope."""
    key = _hmac(("AWS4" + secret_access_key).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def presign_url(
    method: str,
    url: str,
    credentials: Credentials,
    *,
    region: str,
    now: dt.datetime,
    expires_s: int,
    query: Mapping[str, str] | None = None,
    signed_headers: Mapping[str, str] | None = None,
    service: str = "s3",
) -> str:
    """``url`` (scheme, host and already-encoded path, no query) presigned for ``method``.

    ``query`` is added to the URL and signed; ``signed_headers`` (lowercase names) are signed
    besides ``host`` and must then be sent with exactly these values. ``now`` must be aware (UTC).
    """
    if not 1 <= expires_s <= MAX_EXPIRES_S:
        raise ValueError(f"expires_s must be within 1..{MAX_EXPIRES_S}, got {expires_s}")
    stamp = now.astimezone(dt.UTC)
    amz_date = stamp.strftime("%Y%m%dT%H%M%SZ")
    date = stamp.strftime("%Y%m%d")
    scope = f"{date}/{region}/{service}/aws4_request"
    headers = {"host": _host(url)}
    headers.update({k.lower(): " ".join(v.split()) for k, v in (signed_headers or {}).items()})
    names = ";".join(sorted(headers))
    params = dict(query or {})
    params.update(
        {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{credentials.access_key_id}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_s),
            "X-Amz-SignedHeaders": names,
        }
    )
    if credentials.session_token:
        # S3 signs the token as a query parameter (some services append it after signing).
        params["X-Amz-Security-Token"] = credentials.session_token
    path = urlsplit(url).path or "/"
    canonical = "\n".join(
        [
            method.upper(),
            path,
            canonical_query(params),
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            names,
            UNSIGNED_PAYLOAD,
        ]
    )
    to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    key = signing_key(credentials.secret_access_key, date=date, region=region, service=service)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    base = url.split("?", 1)[0]
    return f"{base}?{canonical_query(params)}&X-Amz-Signature={signature}"


def encode_key(key: str) -> str:
    """An S3 object key as a URL path segment sequence (``/`` kept, everything else encoded)."""
    return _encode(key, keep_slash=True)
