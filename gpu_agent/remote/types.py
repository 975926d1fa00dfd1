"""The one result type of every remote source: where to GET a file and how to check it.

Owns :class:`RemoteFile` and the relative-path rule of files inside a model directory. Must not do
I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from common.errors import PermissionDenied

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a remote source, ready to download.

    - ``uri``: the canonical URI of this one file (``s3://bucket/key``,
      ``hf://org/name@<commit>/path``, or the https URL), for messages and for :func:`resolve`
      again (a presigned URL expires; resolving the ``uri`` signs a fresh one).
    - ``path``: the file's path relative to the model directory (``/``-separated, no ``..``, no
      leading ``/``); for a single object, its base name.
    - ``url``: an absolute http(s) URL that a plain GET (with ``Range`` allowed) downloads.
    - ``headers``: sent with requests to ``url``'s origin (scheme, host, port) only; never to a
      redirect target on another origin. Contains secrets (a bearer token): do not log it.
    - ``size``: bytes; ``-1`` when the source does not say (plain https).
    - ``sha256`` / ``git_sha1``: lowercase hex digests the content must match, when known;
      ``git_sha1`` is git's blob id, sha1 of ``b"blob <size>\\0" + content``.
    - ``etag``: the server's entity tag, when known (a resume validator; not a checksum).
    - ``redirect_hosts``: hosts a GET of ``url`` may be redirected to (``host``, ``host:port`` or
      ``*.domain``); empty means redirects are refused.
    """

    uri: str
    path: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    size: int = -1
    sha256: str | None = None
    git_sha1: str | None = None
    etag: str | None = None
    redirect_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 of {self.uri} is not 64 lowercase hex characters")
        if self.git_sha1 is not None and not _SHA1.match(self.git_sha1):
            raise ValueError(f"git_sha1 of {self.uri} is not 40 lowercase hex characters")


def check_relative_path(path: str, *, uri: str) -> str:
    """``path`` if it is a safe relative path inside a model directory, else PermissionDenied.

    A listing names files by keys chosen by whoever wrote the bucket or repository; a key such as
    ``../../etc/x`` or ``/abs`` must never become a path outside the model directory.
    """
    parts = PurePosixPath(path).parts
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("..", ".") for p in path.split("/"))
        or "" in path.split("/")
        or not parts
    ):
        raise PermissionDenied(
            f"{uri} lists a file {path[:200]!r} whose path is not a plain relative path; "
            "refusing to write it"
        )
    return path
