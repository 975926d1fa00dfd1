"""AWS Signature Version 4: presigned URLs (S3) and signed headers (other services).

Owns the canonical request, the string to sign, the signing-key chain, the query parameters of a
presigned URL and the headers of a header-signed request. Pure: the time is an argument, nothing
is sent. The GPU agent's S3 requests are presigned URLs (the payload never signed,
``UNSIGNED-PAYLOAD``, as S3 allows for query-string authentication); the forecaster's requests to
Amazon Managed Service for Prometheus are header-signed (:func:`sign_headers`, payload hashed).

References: "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)" in the S3
API documentation (:func:`presign_url` reproduces its worked example) and "Create a signed AWS API
request" in the IAM user guide (:func:`sign_headers` reproduces the SigV4 test suite's
``get-vanilla-query`` case; see the tests).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlsplit

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


def canonical_query(params: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """Parameters sorted by encoded name (then value), each ``name=value`` encoded, joined by
    ``&``. A sequence of pairs may repeat a name."""
    items = params.items() if isinstance(params, Mapping) else params
    pairs = sorted((_encode(k), _encode(v)) for k, v in items)
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


def sign_headers(
    method: str,
    url: str,
    credentials: Credentials,
    *,
    region: str,
    service: str,
    now: dt.datetime,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers that sign ``method url`` with ``body``: ``Authorization``, ``X-Amz-Date`` and,
    with temporary credentials, ``X-Amz-Security-Token``.

    ``url`` is sent exactly as given (its path already encoded; its query is read back with
    :func:`urllib.parse.parse_qsl` and canonicalised, so any encoding the client chose signs
    the same). ``headers`` (sent as given) are signed besides ``host`` and ``x-amz-date``.
    ``now`` must be aware (UTC).
    """
    stamp = now.astimezone(dt.UTC)
    amz_date = stamp.strftime("%Y%m%dT%H%M%SZ")
    date = stamp.strftime("%Y%m%d")
    scope = f"{date}/{region}/{service}/aws4_request"
    signed = {k.lower(): " ".join(v.split()) for k, v in (headers or {}).items()}
    signed["host"] = _host(url)
    signed["x-amz-date"] = amz_date
    if credentials.session_token:
        # Outside S3 the token is a signed header (not a query parameter).
        signed["x-amz-security-token"] = credentials.session_token
    names = ";".join(sorted(signed))
    parts = urlsplit(url)
    canonical = "\n".join(
        [
            method.upper(),
            parts.path or "/",
            canonical_query(_query_pairs(parts.query)),
            "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)),
            names,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    key = signing_key(credentials.secret_access_key, date=date, region=region, service=service)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    out = {
        "Authorization": f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}",
        "X-Amz-Date": amz_date,
    }
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    return out


def _query_pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def encode_key(key: str) -> str:
    """An S3 object key as a URL path segment sequence (``/`` kept, everything else encoded)."""
    return _encode(key, keep_slash=True)
