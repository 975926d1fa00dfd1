"""``hf://org/name@revision[/path]`` sources: Hugging Face Hub model repositories (or a mirror).

Owns the hf:// URI rule, the endpoint (setting, else ``HF_ENDPOINT``, else the Hub), the token
(a Secret file, else ``HF_TOKEN``), the repository allow-list, and the listing of one revision's
files with their sizes, hashes and download URLs through the Hub's API::

    GET {endpoint}/api/models/{org}/{name}/revision/{revision}?blobs=true
      -> {"sha": <commit>, "siblings": [{"rfilename", "size", "blobId",
                                         "lfs": {"sha256", "size", "pointerSize"}}]}

Files are then downloaded from ``{endpoint}/{org}/{name}/resolve/{commit}/{path}`` (the commit, not
the branch, so every file comes from the same snapshot); LFS and Xet files redirect to a CDN, which
:mod:`gpu_agent.remote.http` follows only to ``allowed_redirect_hosts`` and without the token.
LFS files are verified by their sha256, small (git) files by their git blob sha1. Must not decide
which files a model needs or write files.

Not supported yet: dataset and space repositories, revisions named by a date, the Xet protocol
itself (Xet files are read through the Hub's resolve redirect like LFS files).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

import requests

from common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TemporaryError,
)
from gpu_agent.config import HfSourcesConfig
from gpu_agent.remote.http import raise_for_status, request_following
from gpu_agent.remote.types import RemoteFile, check_relative_path

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_ENDPOINT = re.compile(r"^https?://[^/?#]+/?$")
MAX_ERROR_MESSAGE = 300
LISTING_CACHE_SIZE = 64


class _Listings:
    """Listings of pinned commits, which never change: a directory's files resolved one by one
    (``hf://org/name@<commit>/path`` each) cost one Hub request, not one per file."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: tuple[str, str, str], info: Any) -> None:
        with self._lock:
            self._items[key] = info
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


_LISTINGS = _Listings(LISTING_CACHE_SIZE)


@dataclass(frozen=True, slots=True)
class HfLocation:
    """A repository, a revision and a path in it (``""``: the whole repository)."""

    repo_id: str
    revision: str
    path: str = ""

    @property
    def is_directory(self) -> bool:
        """The repository root or a path ending in ``/``."""
        return self.path == "" or self.path.endswith("/")

    @property
    def uri(self) -> str:
        tail = f"/{self.path}" if self.path else ""
        return f"hf://{self.repo_id}@{quote(self.revision, safe='')}{tail}"


def parse_hf_uri(uri: str) -> HfLocation:
    """``hf://org/name[@revision][/path]``; the revision defaults to ``main``.

    A revision with ``/`` in it (``refs/pr/1``) is written %-encoded: ``@refs%2Fpr%2F1``. The path
    is taken literally. Raises :class:`InvalidInput` for a malformed URI and
    :class:`PermissionDenied` for ``..`` segments.
    """
    if not uri.lower().startswith("hf://"):
        raise InvalidInput(f"{uri!r} is not an hf:// URI")
    if "?" in uri or "#" in uri:
        raise InvalidInput(f"hf source {uri} has '?' or '#'; paths with them are not supported")
    segments = uri[len("hf://") :].split("/")
    if len(segments) < 2:
        raise InvalidInput(f"hf source {uri} must name a repository as hf://org/name@revision")
    org, name_rev = segments[0], segments[1]
    name, at, revision = name_rev.partition("@")
    revision = unquote(revision) if at else DEFAULT_REVISION
    if not _NAME.match(org) or not _NAME.match(name) or ".." in org or ".." in name:
        raise InvalidInput(
            f"hf source {uri}: {org}/{name} is not a repository id (org/name: letters, digits, "
            "'.', '_' and '-')"
        )
    if not revision or any(c in revision for c in "\x00\n\r") or ".." in revision.split("/"):
        raise InvalidInput(f"hf source {uri} has an empty or malformed revision")
    path = "/".join(segments[2:])
    if ".." in PurePosixPath(path).parts or "\x00" in path:
        raise PermissionDenied(f"source {uri} contains a '..' path segment")
    return HfLocation(f"{org}/{name}", revision, path)


def check_allowed(location: HfLocation, config: HfSourcesConfig, *, uri: str) -> None:
    """:class:`PermissionDenied` unless ``allowed_repos`` names the repository (or its org) and,
    with ``require_pinned_revision``, the revision is a commit."""
    org = location.repo_id.split("/", 1)[0]
    if location.repo_id not in config.allowed_repos and f"{org}/*" not in config.allowed_repos:
        raise PermissionDenied(
            f"source {uri}: repository {location.repo_id} is not in remote.hf.allowed_repos"
        )
    if config.require_pinned_revision and not _COMMIT.match(location.revision):
        raise PermissionDenied(
            f"source {uri}: revision {location.revision!r} is not a 40-hex commit and "
            "remote.hf.require_pinned_revision is set; pin the commit"
        )


class HubClient:
    """Lists revisions of one Hub (or mirror) endpoint.

    ``session`` is the HTTP boundary; ``environ`` supplies ``HF_ENDPOINT`` and ``HF_TOKEN`` when the
    settings do not.
    """

    def __init__(
        self,
        config: HfSourcesConfig,
        *,
        session: requests.Session | None = None,
        environ: Mapping[str, str] = os.environ,
        timeout_s: float = 30.0,
    ) -> None:
        self._config = config
        self._session = session if session is not None else requests.Session()
        self._environ = environ
        self._timeout_s = timeout_s

    @property
    def endpoint(self) -> str:
        """The settings' endpoint, else ``HF_ENDPOINT``, else https://huggingface.co."""
        if self._config.endpoint is not None:
            return self._config.endpoint
        value = self._environ.get("HF_ENDPOINT", "").strip()
        if not value:
            return DEFAULT_ENDPOINT
        if not _ENDPOINT.match(value):
            raise FailedPrecondition(
                f"HF_ENDPOINT={value!r} is not a scheme and host (e.g. https://hf-mirror.corp)"
            )
        return value.rstrip("/")

    def _token(self) -> tuple[str | None, str]:
        """(token or None, where it came from)."""
        if self._config.token_file is not None:
            path = Path(self._config.token_file)
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise FailedPrecondition(
                    f"cannot read the Hub token file {path} (remote.hf.token_file): "
                    f"{error.strerror}; mount the Secret there or fix the setting"
                ) from error
            if not token or any(c.isspace() for c in token):
                raise FailedPrecondition(f"the Hub token file {path} is empty or malformed")
            return token, f"token file {path}"
        token = self._environ.get("HF_TOKEN", "").strip()
        return (token, "HF_TOKEN") if token else (None, "no token")

    def expand(self, location: HfLocation) -> list[RemoteFile]:
        """The files of ``location`` (a repository, or a folder of it ending in ``/``) at its
        revision, with paths relative to that folder, in the Hub's order.

        Raises :class:`NotFound` (repository, revision or folder missing), :class:`PermissionDenied`
        (gated repository, token refused), :class:`TemporaryError` (Hub unreachable or failing).
        """
        if not location.is_directory:
            raise InvalidInput(f"{location.uri} names a file; a folder ends in '/'")
        files = [f for f in self._list(location) if f.path.startswith(location.path)]
        if not files:
            raise NotFound(f"{location.uri} has no files at revision {location.revision!r}")
        return [_relative(f, len(location.path)) for f in files]

    def resolve(self, location: HfLocation) -> RemoteFile:
        """The one file ``location.path`` names; :class:`NotFound` when the revision lacks it."""
        if location.is_directory:
            raise InvalidInput(f"{location.uri} names a folder, not a file")
        for remote in self._list(location):
            if remote.path == location.path:
                return _relative(remote, len(remote.path) - len(PurePosixPath(remote.path).name))
        raise NotFound(
            f"{location.uri}: {location.path} is not a file of {location.repo_id} at revision "
            f"{location.revision!r}"
        )

    def _list(self, location: HfLocation) -> list[RemoteFile]:
        endpoint = self.endpoint
        token, token_origin = self._token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        pinned = (endpoint, location.repo_id, location.revision)
        cached = _LISTINGS.get(pinned) if _COMMIT.match(location.revision) else None
        if cached is not None:
            return _files(cached, location, endpoint=endpoint, headers=headers, config=self._config)
        revision = quote(location.revision, safe="")
        url = f"{endpoint}/api/models/{location.repo_id}/revision/{revision}"
        # A redirect of the API (a renamed repository) is followed on the Hub's own origin only:
        # the listing is what every file is verified against, so it never comes from elsewhere.
        with request_following(
            self._session, "GET", f"{url}?blobs=true", secret_headers=headers,
            timeout_s=self._timeout_s, what=f"the Hub at {endpoint}",
        ) as response:  # fmt: skip
            if response.status_code >= 400:
                _raise(response, location, endpoint=endpoint, token_origin=token_origin)
            try:
                info = response.json()
            except (ValueError, requests.RequestException) as error:
                raise TemporaryError(
                    f"{endpoint} sent a revision listing that is not JSON: {error}"
                ) from error
        files = _files(info, location, endpoint=endpoint, headers=headers, config=self._config)
        # Only after the listing proved well-formed, and only under the commit it names.
        _LISTINGS.put((endpoint, location.repo_id, str(info["sha"])), info)
        return files


def _relative(remote: RemoteFile, cut: int) -> RemoteFile:
    return dataclasses.replace(remote, path=remote.path[cut:])


def _files(
    info: Any,
    location: HfLocation,
    *,
    endpoint: str,
    headers: Mapping[str, str],
    config: HfSourcesConfig,
) -> list[RemoteFile]:
    bad = TemporaryError(f"{endpoint} sent a revision listing of {location.repo_id} without "
                         "'sha' and 'siblings'; is remote.hf.endpoint a Hub?")  # fmt: skip
    if not isinstance(info, dict):
        raise bad
    commit = info.get("sha")
    siblings = info.get("siblings")
    if not isinstance(commit, str) or not _COMMIT.match(commit) or not isinstance(siblings, list):
        raise bad
    files = []
    for sibling in siblings:
        if not isinstance(sibling, dict) or not isinstance(sibling.get("rfilename"), str):
            raise bad
        path = check_relative_path(sibling["rfilename"], uri=location.uri)
        lfs = sibling.get("lfs")
        sha256: str | None = None
        git_sha1: str | None = None
        size = sibling.get("size")
        if isinstance(lfs, dict):
            # An LFS (or Xet) file: the sha256 and size are of the content; blobId is the sha1 of
            # the small pointer file git stores instead, and must not be checked against it.
            sha256 = str(lfs.get("sha256", "")).lower() or None
            size = lfs.get("size", size)
        else:
            git_sha1 = str(sibling.get("blobId", "")).lower() or None
        try:
            remote = RemoteFile(
                uri=f"hf://{location.repo_id}@{commit}/{path}",
                path=path,
                url=f"{endpoint}/{location.repo_id}/resolve/{commit}/{quote(path)}",
                headers=dict(headers),
                size=size if isinstance(size, int) and size >= 0 else -1,
                sha256=sha256,
                git_sha1=git_sha1,
                redirect_hosts=tuple(config.allowed_redirect_hosts),
            )
        except ValueError as error:
            raise TemporaryError(
                f"{endpoint} listed {path} with a malformed hash: {error}"
            ) from None
        files.append(remote)
    return files


def _raise(
    response: requests.Response, location: HfLocation, *, endpoint: str, token_origin: str
) -> None:
    # The Hub names the failure in X-Error-Code; a missing and a private repository look the same
    # (401/404 RepositoryNotFound) so that existence does not leak.
    code = response.headers.get("X-Error-Code", "")
    message = response.headers.get("X-Error-Message", "")[:MAX_ERROR_MESSAGE]
    repo = location.repo_id
    if code == "RevisionNotFound":
        raise NotFound(f"revision {location.revision!r} of {repo} does not exist on {endpoint}")
    if code == "RepositoryNotFound":
        raise NotFound(
            f"repository {repo} does not exist on {endpoint}, or it is private and the agent's "
            f"credentials ({token_origin}) have no access to it"
        )
    if code == "GatedRepo":
        raise PermissionDenied(
            f"repository {repo} is gated: accept its terms on the Hub with the account of the "
            f"agent's token ({token_origin})"
        )
    if code == "EntryNotFound":
        raise NotFound(f"{location.uri} does not exist on {endpoint}")
    if response.status_code == 401:
        raise PermissionDenied(
            f"{endpoint} refused the agent's token ({token_origin}) for {repo}"
            + (f": {message}" if message else "")
        )
    raise_for_status(response, f"the Hub's listing of {location.uri}")
