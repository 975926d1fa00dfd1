"""HTTP rules shared by every remote source: redirects, per-host secret headers, status mapping.

Owns which redirects are followed (only to allowed hosts, never from https to http, at most
:data:`MAX_REDIRECTS`), the rule that secret headers (a bearer token, headers from a Secret file)
go to their own origin only and are dropped on any redirect to another origin, reading header
files, and the mapping of HTTP statuses to the error taxonomy. Must not decide which sources are
allowed (that is :mod:`gpu_agent.sources`) or write files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from common.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    PrewarmError,
    TemporaryError,
)

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_HEADER_FILE_BYTES = 64 * 1024


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, lowercase host, port with the scheme's default filled in)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def host_key(url: str) -> str:
    """``host`` or ``host:port`` as written in the URL (lowercase), the key of header files."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port is not None else host


def host_allowed(url: str, patterns: Sequence[str]) -> bool:
    """Whether ``url``'s host matches one of ``patterns``.

    A pattern is ``host`` (any port), ``host:port`` (that port only) or ``*.domain`` (any host
    under domain, not domain itself; any port).
    """
    _, host, port = origin(url)
    for pattern in patterns:
        name, _, want_port = pattern.lower().partition(":")
        if want_port and int(want_port) != port:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and host != name[2:]:
                return True
        elif host == name:
            return True
    return False


def read_header_file(path: str, *, host: str) -> dict[str, str]:
    """The ``Name: value`` lines of a header file (blank lines and ``#`` comments skipped).

    Raises :class:`FailedPrecondition` when the file cannot be read or a line is malformed: the
    agent's Secret mount is missing or wrong, which no retry of the request fixes.
    """
    where = f"header file {path} (remote.https.header_files[{host!r}])"
    try:
        data = Path(path).read_bytes()[: MAX_HEADER_FILE_BYTES + 1]
    except OSError as error:
        raise FailedPrecondition(
            f"cannot read {where}: {error.strerror}; mount the Secret there or fix the setting"
        ) from error
    if len(data) > MAX_HEADER_FILE_BYTES:
        raise FailedPrecondition(f"{where} is larger than {MAX_HEADER_FILE_BYTES} bytes")
    headers: dict[str, str] = {}
    for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in ' \t()<>@,;\\"/[]?={}'):
            # Never echo the line: it is likely a secret.
            raise FailedPrecondition(
                f"{where}, line {number}: expected 'Name: value' (one header per line)"
            )
        if "\r" in value or "\n" in value:
            raise FailedPrecondition(f"{where}, line {number}: the value has a line break")
        headers[name] = value.strip()
    return headers


def raise_for_status(response: requests.Response, what: str) -> None:
    """Map an error status to the taxonomy; return quietly below 400.

    404/410 -> :class:`NotFound`; 401/403 -> :class:`PermissionDenied`; 408, 429 and 5xx ->
    :class:`TemporaryError`; any other 4xx -> :class:`PermissionDenied` (the server refuses this
    request as made; retrying it unchanged will not help).
    """
    status = response.status_code
    if status < 400:
        return
    if status in (404, 410):
        raise NotFound(f"{what} does not exist (HTTP {status})")
    if status in (401, 403):
        raise PermissionDenied(f"{what} refused access (HTTP {status})")
    if status in (408, 429) or status >= 500:
        raise TemporaryError(f"{what} answered HTTP {status}; retry later")
    raise PermissionDenied(f"{what} refused the request (HTTP {status})")


def request_following(
    session: requests.Session,
    method: str,
    url: str,
    *,
    secret_headers: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
    redirect_hosts: Sequence[str] = (),
    timeout_s: float,
    what: str,
) -> requests.Response:
    """Send ``method url`` (streamed), following redirects only where allowed.

    ``secret_headers`` are sent to ``url``'s origin only: a redirect to another origin drops
    them (as browsers and ``requests`` drop ``Authorization``), a redirect back to the origin
    sends them again. ``headers`` (e.g. ``Range``) go to every hop. A redirect is followed when
    its target is on the same origin or its host matches ``redirect_hosts``, and never from https
    to http; otherwise :class:`PermissionDenied`. The final response is returned unread, whatever
    its status (the caller maps it, e.g. with :func:`raise_for_status`); ``response.url`` is where
    it came from. Connection failures raise :class:`TemporaryError`.
    """
    start = origin(url)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        send = dict(headers or {})
        if origin(current) == start:
            send.update(secret_headers)
        try:
            response = session.request(
                method, current, headers=send, stream=True, timeout=timeout_s,
                allow_redirects=False,
            )  # fmt: skip
        except requests.RequestException as error:
            raise TemporaryError(f"cannot reach {what}: {error}") from error
        location = response.headers.get("Location")
        if response.status_code not in REDIRECT_STATUSES or not location:
            return response
        response.close()
        target = urljoin(current, location)
        try:
            _check_redirect(current, target, start=start, redirect_hosts=redirect_hosts)
        except PrewarmError as error:
            raise PermissionDenied(f"{what}: {error}") from None
        current = target
    raise PermissionDenied(f"{what} redirected more than {MAX_REDIRECTS} times")


def _check_redirect(
    current: str,
    target: str,
    *,
    start: tuple[str, str, int | None],
    redirect_hosts: Sequence[str],
) -> None:
    scheme = urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        raise PermissionDenied(f"a redirect to a {scheme or 'relative'}: URL is refused")
    if urlsplit(current).scheme.lower() == "https" and scheme == "http":
        raise PermissionDenied(f"a redirect from https to http ({host_key(target)}) is refused")
    if origin(target) != start and not host_allowed(target, redirect_hosts):
        allowed = ", ".join(redirect_hosts) or "none"
        raise PermissionDenied(
            f"redirected to {host_key(target)}, which is not an allowed redirect host "
            f"(allowed: {allowed})"
        )
