"""``s3://bucket/key`` sources: parsing, credentials, presigned GETs, HEAD and ListObjectsV2.

Owns the S3 URI rule, where credentials come from (a Secret directory, else static keys in the
environment, else web identity through :mod:`gpu_agent.remote.web_identity`),
addressing (virtual-hosted on AWS, path-style on a custom endpoint or a dotted bucket), the
ListObjectsV2 pagination and the mapping of S3's answers to the error taxonomy. Every request is a
presigned URL (:mod:`gpu_agent.remote.sigv4`), so the download itself is a plain ranged GET that
:mod:`gpu_agent.sources` makes like any other. Must not decide which buckets are allowed (that is
:mod:`gpu_agent.sources`) or write files.

Not supported yet: EKS Pod Identity's container credentials endpoint
(``AWS_CONTAINER_CREDENTIALS_FULL_URI``), instance profiles, shared credential files (``~/.aws``),
requester-pays buckets, SSE-C objects.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests

from common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TemporaryError,
)
from gpu_agent.config import S3SourcesConfig
from gpu_agent.remote import sigv4
from gpu_agent.remote.types import RemoteFile, check_relative_path
from gpu_agent.remote.web_identity import DEFAULT_CACHE, CredentialCache, WebIdentity

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_LISTED_KEYS = 100_000
"""A model directory with more objects than this is refused rather than listed forever."""
HEAD_WORKERS = 8
CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and a key; a key that is empty or ends in ``/`` names a prefix (a directory)."""

    bucket: str
    key: str

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class S3Object:
    """One entry of a listing."""

    key: str
    size: int
    etag: str


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/key`` (key taken literally, as the AWS CLI does: no %-decoding).

    Raises :class:`InvalidInput` for another scheme, a malformed bucket name, a query or fragment,
    or a key with a ``..`` segment.
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3":
        raise InvalidInput(f"{uri!r} is not an s3:// URI")
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise InvalidInput(f"s3 source {uri} has '?' or '#'; S3 keys with them are not supported")
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidInput(
            f"s3 source {uri}: {bucket!r} is not a bucket name (3-63 characters: lowercase "
            "letters, digits, '.' and '-')"
        )
    key = parts.path.removeprefix("/")
    if ".." in PurePosixPath(key).parts or "\x00" in key:
        raise PermissionDenied(f"source {uri} contains a '..' path segment")
    return S3Location(bucket, key)


def bucket_allowed(location: S3Location, allowed: list[str]) -> bool:
    """Whether an ``allowed_buckets`` entry (``bucket`` or ``bucket/prefix``) covers ``location``.

    A prefix is a string prefix of the key, as S3's own prefixes are: write ``bucket/models/`` to
    allow one folder.
    """
    for entry in allowed:
        bucket, _, prefix = entry.partition("/")
        if bucket == location.bucket and location.key.startswith(prefix):
            return True
    return False


def load_credentials(
    config: S3SourcesConfig, *, environ: Mapping[str, str]
) -> sigv4.Credentials | None:
    """Credentials from ``config.credentials_dir`` when set, else the environment.

    ``None`` with ``config.anonymous``. Raises :class:`FailedPrecondition` when the configured
    directory lacks a key file or nothing is found at all (the agent's deployment must change).
    """
    if config.anonymous:
        return None
    if config.credentials_dir is not None:
        directory = Path(config.credentials_dir)
        values: dict[str, str] = {}
        for name in CREDENTIAL_NAMES:
            path = directory / name
            try:
                values[name] = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise FailedPrecondition(
                    f"cannot read S3 credential file {path}: {error.strerror}"
                ) from error
        missing = [n for n in CREDENTIAL_NAMES[:2] if not values.get(n)]
        if missing:
            raise FailedPrecondition(
                f"remote.s3.credentials_dir {directory} has no (or an empty) "
                f"{' and '.join(missing)}: mount a Secret with those keys there"
            )
        origin = f"files in {directory}"
    else:
        values = {n: environ.get(n, "").strip() for n in CREDENTIAL_NAMES}
        if not values["AWS_ACCESS_KEY_ID"] or not values["AWS_SECRET_ACCESS_KEY"]:
            raise FailedPrecondition(
                "no S3 credentials: set remote.s3.credentials_dir to a Secret mount with "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, set those environment variables, or "
                "set remote.s3.anonymous for a public bucket, or give the pod a web identity "
                "(EKS IRSA: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)"
            )
        origin = "environment variables"
    return sigv4.Credentials(
        values["AWS_ACCESS_KEY_ID"],
        values["AWS_SECRET_ACCESS_KEY"],
        values.get("AWS_SESSION_TOKEN") or None,
        origin=origin,
    )


def _checksum_sha256(headers: Mapping[str, str]) -> str | None:
    # S3 returns the x-amz-checksum-sha256 an object was uploaded with (base64) when asked with
    # x-amz-checksum-mode: ENABLED. Only a full-object checksum is the sha256 of the content; a
    # multipart upload's COMPOSITE checksum ("<b64>-<parts>") is a hash of part hashes.
    value = headers.get("x-amz-checksum-sha256")
    kind = headers.get("x-amz-checksum-type", "FULL_OBJECT").upper()
    if not value or kind != "FULL_OBJECT" or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


class S3Client:
    """Talks to one S3 endpoint with one set of settings.

    ``session`` is the HTTP boundary, ``environ`` where credentials come from when no
    ``credentials_dir`` is set, ``clock`` the time the signatures are made at (aware, UTC),
    ``page_size`` the keys asked for per ListObjectsV2 page (S3 returns at most 1000),
    ``credential_cache`` where web identity credentials are kept between clients (clients are made
    per request; the default is the process's).
    """

    def __init__(
        self,
        config: S3SourcesConfig,
        *,
        session: requests.Session | None = None,
        environ: Mapping[str, str] = os.environ,
        clock: Clock = _utc_now,
        timeout_s: float = 30.0,
        page_size: int = 1000,
        credential_cache: CredentialCache = DEFAULT_CACHE,
    ) -> None:
        self._config = config
        self._page_size = page_size
        self._session = session if session is not None else requests.Session()
        self._environ = environ
        self._clock = clock
        self._timeout_s = timeout_s
        self._credential_cache = credential_cache

    # ---------------------------------------------------------------------------- credentials

    def _sts_endpoint(self) -> str:
        if self._config.sts_endpoint is not None:
            return self._config.sts_endpoint
        if self._config.endpoint is not None:
            return self._config.endpoint
        return f"https://sts.{self._config.region}.amazonaws.com"

    def credentials(self) -> sigv4.Credentials | None:
        """What requests are signed with: ``None`` when anonymous; the Secret directory when set;
        static keys in the environment; else web identity (the AWS SDKs' order, so a pod with
        both keeps using its static keys)."""
        config = self._config
        identity = WebIdentity.from_environ(self._environ)
        static = all(self._environ.get(n, "").strip() for n in CREDENTIAL_NAMES[:2])
        if config.anonymous or config.credentials_dir is not None or static or identity is None:
            return load_credentials(config, environ=self._environ)
        return self._credential_cache.get(
            identity, endpoint=self._sts_endpoint(), duration_s=config.web_identity_duration_s,
            session=self._session, clock=self._clock, timeout_s=self._timeout_s,
        )  # fmt: skip

    # ----------------------------------------------------------------------------- addressing

    def _base_url(self, bucket: str, key: str) -> str:
        path = sigv4.encode_key(key)
        if self._config.endpoint is not None:
            return f"{self._config.endpoint}/{bucket}/{path}"
        region = self._config.region
        if "." in bucket:
            # A dotted bucket name does not match the *.s3 wildcard certificate: path-style.
            return f"https://s3.{region}.amazonaws.com/{bucket}/{path}"
        return f"https://{bucket}.s3.{region}.amazonaws.com/{path}"

    def presign(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        signed_headers: Mapping[str, str] | None = None,
        credentials: sigv4.Credentials | None = None,
    ) -> str:
        """A URL for ``method`` on ``bucket``/``key``, valid ``presign_expires_s`` from now.

        Unsigned (query only) when the settings say ``anonymous``. Raises
        :class:`FailedPrecondition` when no credentials can be found.
        """
        url = self._base_url(bucket, key)
        if credentials is None:
            credentials = self.credentials()
        if credentials is None:
            if query:
                url += "?" + sigv4.canonical_query(query)
            return url
        return sigv4.presign_url(
            method,
            url,
            credentials,
            region=self._config.region,
            now=self._clock(),
            expires_s=self._config.presign_expires_s,
            query=query,
            signed_headers=signed_headers,
        )

    # ------------------------------------------------------------------------------- requests

    def resolve(self, location: S3Location) -> RemoteFile:
        """The object at ``location``: a presigned GET URL, its size, ETag and stored sha256.

        One HEAD request. Raises :class:`NotFound` (no such key or bucket),
        :class:`PermissionDenied` (credentials refused), :class:`FailedPrecondition` (wrong
        region, no credentials), :class:`TemporaryError` (server unreachable or failing).
        """
        if location.is_prefix:
            raise InvalidInput(f"{location.uri} names a prefix (ends in '/'), not an object")
        credentials = self.credentials()
        checksum_mode = {"x-amz-checksum-mode": "ENABLED"}
        head_url = self.presign(
            "HEAD", location.bucket, location.key, signed_headers=checksum_mode,
            credentials=credentials,
        )  # fmt: skip
        try:
            response = self._session.head(
                head_url, headers=checksum_mode, timeout=self._timeout_s, allow_redirects=False
            )
        except requests.RequestException as error:
            raise TemporaryError(f"cannot reach S3 for {location.uri}: {error}") from error
        if response.status_code >= 300:
            self._raise(response, location.uri, credentials)
        etag = response.headers.get("ETag", "").strip() or None
        return RemoteFile(
            uri=location.uri,
            path=PurePosixPath(location.key).name,
            url=self.presign("GET", location.bucket, location.key, credentials=credentials),
            size=int(response.headers.get("Content-Length", "-1") or -1),
            sha256=_checksum_sha256(response.headers),
            etag=etag,
        )

    def list_objects(self, location: S3Location) -> list[S3Object]:
        """Every object whose key starts with ``location.key`` (ListObjectsV2, all pages)."""
        credentials = self.credentials()
        objects: list[S3Object] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": location.key, "max-keys": str(self._page_size)}
            if token is not None:
                query["continuation-token"] = token
            url = self.presign("GET", location.bucket, "", query=query, credentials=credentials)
            try:
                response = self._session.get(url, timeout=self._timeout_s, allow_redirects=False)
            except requests.RequestException as error:
                raise TemporaryError(f"cannot reach S3 to list {location.uri}: {error}") from error
            if response.status_code >= 300:
                self._raise(response, location.uri, credentials)
            page, token = _parse_listing(response.content, location.uri)
            objects.extend(page)
            if len(objects) > MAX_LISTED_KEYS:
                raise InvalidInput(
                    f"{location.uri} lists more than {MAX_LISTED_KEYS} objects; name a narrower "
                    "prefix"
                )
            if token is None:
                return objects

    def expand(self, location: S3Location) -> list[RemoteFile]:
        """The objects under a prefix as files of a model directory, in key order.

        Paths are keys less the prefix; "folder" marker objects (keys ending in ``/``) are
        skipped. Each object is HEADed (for its stored sha256 and a current ETag) and gets a
        presigned GET URL. Raises :class:`NotFound` when nothing is under the prefix and
        :class:`PermissionDenied` for a key that is not a plain relative path.
        """
        if not location.is_prefix:
            raise InvalidInput(f"{location.uri} names an object; a directory ends in '/'")
        listed = [o for o in self.list_objects(location) if not o.key.endswith("/")]
        if not listed:
            raise NotFound(f"{location.uri} has no objects (empty or missing prefix)")
        for obj in listed:
            check_relative_path(obj.key[len(location.key) :], uri=f"s3://{location.bucket}/")
        with ThreadPoolExecutor(HEAD_WORKERS, thread_name_prefix="s3-head") as pool:
            resolved = list(
                pool.map(lambda o: self.resolve(S3Location(location.bucket, o.key)), listed)
            )
        return [
            dataclasses.replace(f, path=o.key[len(location.key) :])
            for o, f in zip(listed, resolved, strict=True)
        ]

    # --------------------------------------------------------------------------------- errors

    def _raise(
        self, response: requests.Response, uri: str, credentials: sigv4.Credentials | None
    ) -> None:
        code, message = _error_code(response)
        status = response.status_code
        who = (
            "anonymous requests"
            if credentials is None
            else f"access key {credentials.access_key_id} (from {credentials.origin})"
        )
        region = response.headers.get("x-amz-bucket-region")
        if (
            status == 301
            or code in ("PermanentRedirect", "AuthorizationHeaderMalformed")
            or (region and region != self._config.region)
        ):
            raise FailedPrecondition(
                f"S3 refused {uri}: the bucket is in another region"
                + (f" ({region})" if region else "")
                + f" than remote.s3.region={self._config.region}; set remote.s3.region"
            )
        if code in ("NoSuchBucket", "NoSuchKey") or status == 404:
            what = {"NoSuchBucket": "no such bucket", "NoSuchKey": "no such key"}.get(
                code, "no such key or bucket"
            )
            raise NotFound(f"{uri} does not exist ({what})")
        if status in (401, 403) or code in (
            "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
            "InvalidToken", "TokenRefreshRequired",
        ):  # fmt: skip
            detail = f"{code}: {message}" if code else f"HTTP {status}"
            raise PermissionDenied(
                f"S3 refused {uri} to {who} ({detail}); check the credentials and the bucket policy"
            )
        if status in (408, 429, 503) or status >= 500 or code == "SlowDown":
            raise TemporaryError(f"S3 answered {code or status} for {uri}; retry later")
        raise PermissionDenied(f"S3 refused {uri}: {code or f'HTTP {status}'} {message}".strip())


def _error_code(response: requests.Response) -> tuple[str, str]:
    # An S3 error is an XML <Error><Code/><Message/></Error> body; a HEAD has no body, and then
    # MinIO (not AWS) still names the code in a header.
    code = response.headers.get("x-minio-error-code", "")
    message = response.headers.get("x-minio-error-desc", "").strip('"')
    if response.request.method != "HEAD" and response.content:
        try:
            root = ET.fromstring(response.content)
        except ET.ParseError:
            return code, message
        code = root.findtext("Code") or code
        message = root.findtext("Message") or message
    return code, message


def _parse_listing(body: bytes, uri: str) -> tuple[list[S3Object], str | None]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise TemporaryError(f"S3 sent an unreadable listing of {uri}: {error}") from error
    objects = []
    for item in root.iter(f"{_NS}Contents"):
        key = item.findtext(f"{_NS}Key")
        size = item.findtext(f"{_NS}Size")
        if key is None or size is None or not size.isdigit():
            raise TemporaryError(f"S3 sent a listing of {uri} with an entry without Key or Size")
        objects.append(S3Object(key, int(size), (item.findtext(f"{_NS}ETag") or "").strip()))
    truncated = (root.findtext(f"{_NS}IsTruncated") or "false").lower() == "true"
    token = root.findtext(f"{_NS}NextContinuationToken") if truncated else None
    if truncated and not token:
        raise TemporaryError(f"S3 sent a truncated listing of {uri} without a continuation token")
    return objects, token
