"""Directory sources: a Preload whose one source is ``hf://org/name@rev[/folder/]`` or
``s3://bucket/prefix/``, expanded into the files of a directory model.

Owns which Preloads are expanded (exactly one weights source, without a ``path``, whose URI names
a directory: :func:`gpu_agent.remote.is_directory`), the mapping of the listing
(:func:`gpu_agent.remote.expand`) onto :class:`gpu_agent.model_dir.DirectoryEntry`, the rule that
every listed file can be verified (its sha256, or for the Hub's small files its git blob sha1),
and the revision such a directory gets when the request names none: an hf:// directory's resolved
commit, an s3:// prefix's digest of its sorted (path, sha256 or ETag) list. The listing is network
I/O: it runs in a worker thread, bounded by the Preload's deadline.

Each entry keeps the file's ``uri``, not its download URL: the Fetcher resolves that URI again
when the file's fetch starts, so an S3 URL is freshly signed and the Hub token stays with the Hub.
Must not fetch or write files, or decide tiers (:mod:`gpu_agent.fetch` and the loader do).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests

from common.errors import DeadlineExceeded, InvalidInput
from gpu_agent import remote
from gpu_agent.config import RemoteSourcesConfig
from gpu_agent.model_dir import DirectoryEntry, Expander
from gpu_agent.remote import hf
from gpu_agent.sources import SourcePolicy
from gpu_agent.specs import PreloadSpec

MIN_REQUEST_TIMEOUT_S = 0.1
"""The shortest per-request timeout handed to the listing when the deadline is near."""


@dataclass(frozen=True, slots=True)
class Expansion:
    """A directory URI's files (paths relative to it) and the revision they form."""

    uri: str
    entries: tuple[DirectoryEntry, ...]
    revision: str


def directory_uri(spec: PreloadSpec) -> str | None:
    """The URI to expand when ``spec`` is a directory source: one weights source, without a
    path, naming a directory; ``None`` otherwise. :class:`InvalidInput` for a malformed
    hf:// or s3:// URI (:class:`common.errors.PermissionDenied` for one with ``..``)."""
    if len(spec.weights) != 1 or spec.weights[0].path:
        return None
    uri = spec.weights[0].uri
    return uri if remote.is_directory(uri) else None


def listed_entries(
    uri: str, files: Sequence[remote.RemoteFile], *, require_checksum: bool
) -> Expansion:
    """The directory entries of ``uri``'s listing and its revision (see the module docstring).

    Raises :class:`InvalidInput` when ``require_checksum`` is set and a file has neither a sha256
    nor a git blob sha1 to be verified by (an S3 object uploaded without a SHA256 checksum).
    """
    entries = []
    for f in files:
        if require_checksum and f.sha256 is None and f.git_sha1 is None:
            raise InvalidInput(
                f"{uri}: {f.path} ({f.uri}) has no checksum to verify it by and the agent "
                "requires one (require_sha256): upload S3 objects with SHA256 checksums "
                "(aws s3 cp --checksum-algorithm SHA256), or list every file with its sha256 "
                "and path in the request instead of the directory URI"
            )
        entries.append(DirectoryEntry(f.path, f.uri, f.sha256 or "", max(f.size, 0)))
    return Expansion(uri, tuple(entries), listing_revision(uri, files))


def listing_revision(uri: str, files: Sequence[remote.RemoteFile]) -> str:
    """An hf:// directory's commit (every listed file names it); for an s3:// prefix 16 hex
    digits of the sorted (path, sha256 or ETag) list, so unchanged objects keep their revision
    and any replaced one makes a new one."""
    if uri.lower().startswith("hf://") and files:
        return hf.parse_hf_uri(files[0].uri).revision
    hasher = hashlib.sha256()
    for path, version in sorted((f.path, f.sha256 or f.etag or "") for f in files):
        hasher.update(f"{path}\0{version}\n".encode())
    return hasher.hexdigest()[:16]


class DirectoryExpander:
    """Lists directory sources for the agent.

    ``policy`` is checked first (a bucket or repository that is not allowed is refused before any
    request); ``session`` and ``environ`` are the HTTP and credential boundaries of
    :func:`gpu_agent.remote.expand`; ``timeout_s`` bounds each request.
    """

    def __init__(
        self,
        policy: SourcePolicy,
        config: RemoteSourcesConfig,
        *,
        require_checksum: bool,
        session: requests.Session | None = None,
        environ: Mapping[str, str] = os.environ,
        timeout_s: float = 30.0,
    ) -> None:
        self._policy = policy
        self._config = config
        self._require_checksum = require_checksum
        self._session = session
        self._environ = environ
        self._timeout_s = timeout_s

    def expand(self, uri: str, sha256: str, *, timeout_s: float | None = None) -> Expansion:
        """The files of the directory ``uri`` (blocking: one listing, and a HEAD per S3 object).

        Raises the :mod:`common.errors` kinds of :func:`gpu_agent.remote.expand`, and
        :class:`InvalidInput` for a sha256 on the directory itself (each file has its own).
        """
        if sha256:
            raise InvalidInput(
                f"{uri} is a directory: it has no sha256 of its own (each file's comes from the "
                "listing); leave sha256 empty"
            )
        self._policy.check(uri, "")
        files = remote.expand(
            uri, self._config, session=self._session, environ=self._environ,
            timeout_s=self._timeout_s if timeout_s is None else timeout_s,
        )  # fmt: skip
        return listed_entries(uri, files, require_checksum=self._require_checksum)

    async def expand_spec(
        self, spec: PreloadSpec, *, remaining_s: float | None
    ) -> tuple[PreloadSpec, Expander]:
        """``spec`` with its revision filled in when it is a directory source (the request's own
        revision wins), and the expander :func:`gpu_agent.specs.check_spec` takes.

        The listing runs in a worker thread; it fails with :class:`DeadlineExceeded` when it
        does not finish within ``remaining_s`` (the Preload's deadline; ``None``: none). A
        directory URI next to other sources is left to :func:`check_spec` to refuse.
        """
        uri = directory_uri(spec)
        if uri is None:
            return spec, _refuse_directories
        if remaining_s is not None and remaining_s <= 0:
            raise DeadlineExceeded(f"the Preload's deadline passed before {uri} was listed")
        request_timeout = self._timeout_s
        if remaining_s is not None:
            request_timeout = max(min(request_timeout, remaining_s), MIN_REQUEST_TIMEOUT_S)
        listing = asyncio.to_thread(
            self.expand, uri, spec.weights[0].sha256, timeout_s=request_timeout
        )
        try:
            expansion = await asyncio.wait_for(listing, remaining_s)
        except TimeoutError:
            # The worker thread ends by itself within its request timeout; it writes nothing.
            raise DeadlineExceeded(
                f"listing {uri} did not finish within the Preload's deadline "
                f"({remaining_s:.1f} s); retry with a longer deadline"
            ) from None

        def expander(source_uri: str, _sha256: str) -> list[DirectoryEntry] | None:
            return list(expansion.entries) if source_uri == uri else None

        return dataclasses.replace(spec, revision=spec.revision or expansion.revision), expander


def _refuse_directories(uri: str, _sha256: str) -> list[DirectoryEntry] | None:
    # Not the Preload's only source: an empty listing makes check_spec refuse it with a message
    # saying so (a directory URI must stand alone), before anything is fetched.
    return [] if remote.is_directory(uri) else None
