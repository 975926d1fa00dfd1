"""Which weight/artifact sources the agent may read, and fetching them into the disk cache.

Owns URI policy (schemes, allowed roots and prefixes, path traversal, sha256 syntax) and the
fetch of one source to one file: written to ``<dest>.partial``, hashed, verified, then renamed, so a
failed or killed fetch never leaves a file that looks complete. http(s) sources are fetched with
parallel range requests when the server supports them. It must not decide tiers or placement.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import requests

from common.errors import DataLoss, InvalidInput, NotFound, PermissionDenied, TemporaryError
from gpu_agent.control import LoadControl

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
COPY_BLOCK_BYTES = 8 * 1024**2
HTTP_BLOCK_BYTES = 256 * 1024
"""requests' iter_content blocks until a whole block arrived; small blocks keep cancellation and
deadlines responsive on slow links."""
PARTIAL_SUFFIX = ".partial"
MAX_URI_LEN = 8192


@dataclass(frozen=True, slots=True)
class CheckedSource:
    """A source that passed the policy: ``path`` for file://, ``url`` for http(s)://."""

    uri: str
    scheme: str
    sha256: str
    path: Path | None = None
    url: str | None = None

    @property
    def name(self) -> str:
        """The file name the source is cached under."""
        if self.path is not None:
            return self.path.name
        return PurePosixPath(urlsplit(self.url or "").path).name or "blob"


class SourcePolicy:
    """Decides whether a URI may be fetched.

    Raises :class:`InvalidInput` for malformed URIs or sha256 values, :class:`PermissionDenied` for
    schemes, roots or prefixes that are not allowed and for ``..`` segments, and
    :class:`NotFound` for a file:// source that does not exist.
    """

    def __init__(
        self,
        schemes: Sequence[str],
        *,
        file_roots: Sequence[str],
        http_prefixes: Sequence[str],
        require_sha256: bool,
    ) -> None:
        self._schemes = frozenset(schemes)
        self._roots = tuple(Path(os.path.realpath(root)) for root in file_roots)
        self._prefixes = tuple(http_prefixes)
        self._require_sha256 = require_sha256

    def check(self, uri: str, sha256: str) -> CheckedSource:
        """Validate one source; see the class docstring for the errors."""
        if not uri:
            raise InvalidInput("source uri is empty")
        if len(uri) > MAX_URI_LEN:
            raise InvalidInput(f"source uri is longer than {MAX_URI_LEN} characters")
        digest = sha256.lower()
        if digest and not _SHA256.match(digest):
            raise InvalidInput(f"sha256 of {uri} must be 64 hex characters, got {sha256!r}")
        if not digest and self._require_sha256:
            raise InvalidInput(f"source {uri} has no sha256 and the agent requires one")
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if not scheme:
            raise InvalidInput(f"source {uri!r} has no scheme (expected file:// or https://)")
        if scheme not in self._schemes:
            raise PermissionDenied(
                f"scheme {scheme!r} of {uri} is not allowed; allowed: {sorted(self._schemes)}"
            )
        raw_path = unquote(parts.path)
        if ".." in PurePosixPath(raw_path).parts or "\x00" in raw_path:
            raise PermissionDenied(f"source {uri} contains a '..' path segment")
        if scheme == "file":
            return self._check_file(uri, parts.netloc, raw_path, digest)
        if scheme in ("http", "https"):
            if not parts.netloc:
                raise InvalidInput(f"source {uri} has no host")
            if not any(uri.startswith(prefix) for prefix in self._prefixes):
                raise PermissionDenied(f"source {uri} is not under an allowed URL prefix")
            return CheckedSource(uri=uri, scheme=scheme, sha256=digest, url=uri)
        raise PermissionDenied(f"scheme {scheme!r} is not supported")

    def _check_file(self, uri: str, host: str, raw_path: str, digest: str) -> CheckedSource:
        if host not in ("", "localhost"):
            raise InvalidInput(f"file:// source {uri} names a host; only local files are read")
        if not raw_path.startswith("/"):
            raise InvalidInput(f"file:// source {uri} must be an absolute path")
        # Resolve links before the root check, so a link inside a root cannot point outside it.
        resolved = Path(os.path.realpath(raw_path))
        if not any(resolved.is_relative_to(root) for root in self._roots):
            raise PermissionDenied(f"source {uri} is outside the allowed file roots")
        if not resolved.is_file():
            raise NotFound(f"source {uri} does not exist or is not a file")
        return CheckedSource(uri=uri, scheme="file", sha256=digest, path=resolved)


Progress = Callable[[int], None]
"""Called with the number of bytes just written."""


class Fetcher:
    """Copies a checked source to a file, verifying its sha256.

    ``session`` is the HTTP boundary (a ``requests.Session``; tests point sources at a loopback
    server). On any failure the ``.partial`` file is removed and nothing is left at ``dest``.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        parallel_ranges: int = 8,
        range_bytes: int = 64 * 1024**2,
        timeout_s: float = 30.0,
    ) -> None:
        self._session = session if session is not None else requests.Session()
        self._parallel = parallel_ranges
        self._range_bytes = range_bytes
        self._timeout_s = timeout_s

    def fetch(
        self, source: CheckedSource, dest: Path, *, control: LoadControl, progress: Progress
    ) -> tuple[int, str]:
        """Fetch ``source`` to ``dest``; return its size and sha256.

        Raises :class:`DataLoss` when the content does not match the source's sha256.
        """
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if source.path is not None:
                digest = self._copy_file(source.path, partial, control=control, progress=progress)
            else:
                digest = self._download(source, partial, control=control, progress=progress)
            if source.sha256 and digest != source.sha256:
                raise DataLoss(
                    f"checksum mismatch for {source.uri}: expected sha256 {source.sha256}, "
                    f"got {digest}"
                )
            size = partial.stat().st_size
            os.replace(partial, dest)
            return size, digest
        finally:
            partial.unlink(missing_ok=True)

    @staticmethod
    def _copy_file(src: Path, partial: Path, *, control: LoadControl, progress: Progress) -> str:
        hasher = hashlib.sha256()
        with src.open("rb") as reader, partial.open("wb") as writer:
            while True:
                control.checkpoint()
                block = reader.read(COPY_BLOCK_BYTES)
                if not block:
                    break
                hasher.update(block)
                writer.write(block)
                progress(len(block))
        return hasher.hexdigest()

    def _download(
        self, source: CheckedSource, partial: Path, *, control: LoadControl, progress: Progress
    ) -> str:
        url = source.url or ""
        try:
            head = self._session.head(url, timeout=self._timeout_s, allow_redirects=False)
        except requests.RequestException as error:
            raise TemporaryError(f"cannot reach {url}: {error}") from error
        if head.status_code == 404:
            raise NotFound(f"source {url} does not exist (HTTP 404)")
        if head.status_code in (401, 403):
            raise PermissionDenied(f"source {url} refused access (HTTP {head.status_code})")
        if head.status_code >= 400:
            raise TemporaryError(f"source {url} answered HTTP {head.status_code}")
        size = int(head.headers.get("Content-Length", "0") or 0)
        ranged = head.headers.get("Accept-Ranges", "").lower() == "bytes" and size > 0
        if ranged and size > self._range_bytes and self._parallel > 1:
            self._download_ranges(url, partial, size=size, control=control, progress=progress)
        else:
            self._download_stream(url, partial, control=control, progress=progress)
        control.checkpoint()
        return _sha256_of(partial, control=control)

    def _download_stream(
        self, url: str, partial: Path, *, control: LoadControl, progress: Progress
    ) -> None:
        with (
            self._get(url, headers={}) as response,
            partial.open("wb") as writer,
        ):
            for block in response.iter_content(HTTP_BLOCK_BYTES):
                control.checkpoint()
                writer.write(block)
                progress(len(block))

    def _download_ranges(
        self, url: str, partial: Path, *, size: int, control: LoadControl, progress: Progress
    ) -> None:
        with partial.open("wb") as writer:
            writer.truncate(size)
        fd = os.open(partial, os.O_WRONLY)
        try:

            def fetch_range(start: int) -> None:
                end = min(start + self._range_bytes, size) - 1
                with self._get(url, headers={"Range": f"bytes={start}-{end}"}) as response:
                    if response.status_code != 206:
                        raise TemporaryError(f"{url} ignored a range request")
                    offset = start
                    for block in response.iter_content(HTTP_BLOCK_BYTES):
                        control.checkpoint()
                        os.pwrite(fd, block, offset)
                        offset += len(block)
                        progress(len(block))
                    if offset != end + 1:
                        raise DataLoss(f"{url}: short range response ({offset - start} bytes)")

            with ThreadPoolExecutor(self._parallel, thread_name_prefix="range") as pool:
                futures = [pool.submit(fetch_range, s) for s in range(0, size, self._range_bytes)]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    # Stop the other ranges at their next block; the first error is reported.
                    for future in futures:
                        future.cancel()
                    control.cancel("another range of the same download failed")
                    raise
        finally:
            os.close(fd)

    def _get(self, url: str, *, headers: dict[str, str]) -> requests.Response:
        try:
            response = self._session.get(
                url, headers=headers, stream=True, timeout=self._timeout_s, allow_redirects=False
            )
        except requests.RequestException as error:
            raise TemporaryError(f"cannot fetch {url}: {error}") from error
        if response.status_code >= 400:
            response.close()
            raise TemporaryError(f"{url} answered HTTP {response.status_code}")
        return response


def _sha256_of(path: Path, *, control: LoadControl) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as reader:
        while block := reader.read(COPY_BLOCK_BYTES):
            control.checkpoint()
            hasher.update(block)
    return hasher.hexdigest()


def copy_with_progress(src: Path, dest: Path, *, control: LoadControl, progress: Progress) -> None:
    """Copy ``src`` to ``dest`` via ``dest.partial`` and a rename; no partial file survives.

    The bytes move inside the kernel (``sendfile``, file to file since Linux 2.6.33) in blocks, so
    cancellation and deadlines are checked between blocks; where sendfile is refused it falls
    back to reads and writes.
    """
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    try:
        with src.open("rb") as reader, partial.open("wb") as writer:
            size = os.fstat(reader.fileno()).st_size
            offset = 0
            try:
                while offset < size:
                    control.checkpoint()
                    sent = os.sendfile(writer.fileno(), reader.fileno(), offset, COPY_BLOCK_BYTES)
                    if sent == 0:
                        break
                    offset += sent
                    progress(sent)
            except OSError as error:
                if offset or error.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                while block := reader.read(COPY_BLOCK_BYTES):
                    control.checkpoint()
                    writer.write(block)
                    progress(len(block))
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
