"""Temporary AWS credentials from a workload identity token: STS ``AssumeRoleWithWebIdentity``.

Owns what EKS IRSA puts in a pod's environment (``AWS_ROLE_ARN``, ``AWS_WEB_IDENTITY_TOKEN_FILE``,
optionally ``AWS_ROLE_SESSION_NAME``), the unsigned STS call that trades the token for temporary
credentials, the parsing of STS's answer and errors, and a cache that keeps the credentials until
shortly before they expire. The token file is read again at each exchange: the kubelet rotates the
projected token (by default hourly) and an old one is refused. Must not sign requests or read
static credentials (its callers, the agent's S3 source and the forecaster's Prometheus source,
decide which kind applies) and must never put the token in a message.
"""

from __future__ import annotations

import datetime as dt
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from common.aws import sigv4
from common.errors import FailedPrecondition, PermissionDenied, TemporaryError

ROLE_ARN = "AWS_ROLE_ARN"
TOKEN_FILE = "AWS_WEB_IDENTITY_TOKEN_FILE"
SESSION_NAME = "AWS_ROLE_SESSION_NAME"
DEFAULT_SESSION_NAME = "prewarm-gpu-agent"
STS_VERSION = "2011-06-15"
REFRESH_BEFORE = dt.timedelta(minutes=5)
"""Credentials are exchanged again this long before STS's ``Expiration`` (the AWS SDKs' margin),
so that a URL signed just before never outlives them by less than that."""

Clock = Callable[[], dt.datetime]


@dataclass(frozen=True, slots=True)
class WebIdentity:
    """The role to assume and the file holding the token to prove the pod's identity with."""

    role_arn: str
    token_file: str
    session_name: str = DEFAULT_SESSION_NAME

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, default_session_name: str = DEFAULT_SESSION_NAME
    ) -> WebIdentity | None:
        """The identity EKS IRSA (or anything setting the same variables) configured, if any;
        ``default_session_name`` when ``AWS_ROLE_SESSION_NAME`` is not set."""
        role_arn = environ.get(ROLE_ARN, "").strip()
        token_file = environ.get(TOKEN_FILE, "").strip()
        if not role_arn or not token_file:
            return None
        session_name = environ.get(SESSION_NAME, "").strip() or default_session_name
        return cls(role_arn, token_file, session_name)

    def read_token(self) -> str:
        """The token file's current contents; :class:`FailedPrecondition` naming it otherwise."""
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise FailedPrecondition(
                f"cannot read the web identity token file {self.token_file} ({TOKEN_FILE}): "
                f"{error.strerror or error}; mount the projected service account token there "
                "(EKS IRSA does) or unset the variable"
            ) from error
        if not token:
            raise FailedPrecondition(f"the web identity token file {self.token_file} is empty")
        return token


@dataclass(frozen=True, slots=True)
class _Entry:
    credentials: sigv4.Credentials
    expiration: dt.datetime


class CredentialCache:
    """Temporary credentials per (STS endpoint, identity, duration), shared by every S3 client of
    the process (they are made per request); thread-safe, one exchange at a time per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, WebIdentity, int], _Entry] = {}

    def get(
        self,
        identity: WebIdentity,
        *,
        endpoint: str,
        duration_s: int,
        session: requests.Session,
        clock: Clock,
        timeout_s: float,
    ) -> sigv4.Credentials:
        """Cached credentials valid for at least :data:`REFRESH_BEFORE`, else fresh ones."""
        key = (endpoint, identity, duration_s)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and clock() < entry.expiration - REFRESH_BEFORE:
                return entry.credentials
            entry = assume_role_with_web_identity(
                identity, endpoint=endpoint, duration_s=duration_s, session=session,
                timeout_s=timeout_s,
            )  # fmt: skip
            self._entries[key] = entry
            return entry.credentials


DEFAULT_CACHE = CredentialCache()


def assume_role_with_web_identity(
    identity: WebIdentity,
    *,
    endpoint: str,
    duration_s: int,
    session: requests.Session,
    timeout_s: float,
) -> _Entry:
    """One exchange: POST the (unsigned) STS form to ``endpoint``; the credentials and expiry.

    Raises :class:`FailedPrecondition` (token file unreadable), :class:`PermissionDenied` (STS
    refused: its code and message), :class:`TemporaryError` (STS unreachable, failing or
    throttling, or an unreadable answer).
    """
    form = {
        "Action": "AssumeRoleWithWebIdentity",
        "Version": STS_VERSION,
        "RoleArn": identity.role_arn,
        "RoleSessionName": identity.session_name,
        "WebIdentityToken": identity.read_token(),
        "DurationSeconds": str(duration_s),
    }
    who = f"role {identity.role_arn} with the token in {identity.token_file}"
    try:
        response = session.post(
            endpoint + "/", data=form, timeout=timeout_s, allow_redirects=False,
            headers={"Accept": "application/xml"},
        )  # fmt: skip
    except requests.RequestException as error:
        # requests' message names the URL, never the form body that holds the token.
        raise TemporaryError(f"cannot reach STS at {endpoint} to assume {who}: {error}") from error
    if response.status_code >= 300:
        code, message = _error(response.content)
        detail = f"{code}: {message}" if code else f"HTTP {response.status_code}"
        if (
            response.status_code in (429, 503)
            or response.status_code >= 500
            or code in ("Throttling", "IDPCommunicationError", "ServiceUnavailable")
        ):
            raise TemporaryError(f"STS at {endpoint} could not assume {who} ({detail}); retry")
        # AccessDenied (the role's trust policy), InvalidIdentityToken, ExpiredToken, and
        # MinIO's InvalidParameterValue for a token it cannot verify: the deployment must change.
        raise PermissionDenied(
            f"STS at {endpoint} refused to assume {who} ({detail}); check the role's trust policy "
            "(issuer, audience, service account) and the token"
        )
    return _parse_credentials(response.content, endpoint=endpoint, who=who)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, name: str) -> str | None:
    # STS answers in the https://sts.amazonaws.com/doc/2011-06-15/ namespace; match local names.
    for element in root.iter():
        if _local(element.tag) == name:
            return (element.text or "").strip()
    return None


def _error(body: bytes) -> tuple[str, str]:
    # <ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return _find(root, "Code") or "", _find(root, "Message") or ""


def _parse_credentials(body: bytes, *, endpoint: str, who: str) -> _Entry:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise TemporaryError(f"STS at {endpoint} sent an unreadable answer: {error}") from error
    values = {
        name: _find(root, name)
        for name in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise TemporaryError(f"STS at {endpoint} sent credentials without {', '.join(missing)}")
    try:
        expiration = dt.datetime.fromisoformat(str(values["Expiration"]))
    except ValueError as error:
        raise TemporaryError(f"STS at {endpoint} sent an unreadable Expiration") from error
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=dt.UTC)
    credentials = sigv4.Credentials(
        str(values["AccessKeyId"]),
        str(values["SecretAccessKey"]),
        values["SessionToken"],
        origin=f"web identity: {who}",
    )
    return _Entry(credentials, expiration)
