"""Which weight/artifact sources the agent may read, and fetching them into the disk cache.

Owns URI policy (schemes, allowed roots, prefixes, buckets and repositories, path traversal, sha256
syntax) and the fetch of one source to one file: written to ``<dest>.partial``, hashed, verified,
then renamed, so a failed or killed fetch never leaves a file that looks complete. Remote sources
(http(s), ``s3://`` through presigned URLs, ``hf://`` through the Hub's resolve URLs) are fetched
with parallel range requests when the server supports them, and a ``.partial`` left by a retryable
failure is resumed from its verified length. It must not decide tiers or placement; listing and
signing are :mod:`gpu_agent.remote`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import requests

from common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TemporaryError,
)
from gpu_agent import remote
from gpu_agent.config import RemoteSourcesConfig
from gpu_agent.control import LoadControl
from gpu_agent.remote.http import raise_for_status, request_following

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
COPY_BLOCK_BYTES = 8 * 1024**2
HTTP_BLOCK_BYTES = 256 * 1024
"""requests' iter_content blocks until a whole block arrived; small blocks keep cancellation and
deadlines responsive on slow links."""
PARTIAL_SUFFIX = ".partial"
RESUME_SUFFIX = ".resume"
"""``<dest>.partial.resume``: the record that makes a kept ``.partial`` resumable (see
:class:`Fetcher`). :meth:`gpu_agent.diskcache.DiskCache.recover` removes both like any file outside
a manifest."""
MAX_URI_LEN = 8192
REMOTE_SCHEMES = ("s3", "hf")


@dataclass(frozen=True, slots=True)
class CheckedSource:
    """A source that passed the policy: ``path`` for file://, ``url`` for http(s)://.

    ``s3://`` and ``hf://`` sources have neither: the :class:`Fetcher` resolves their ``uri``
    (:func:`gpu_agent.remote.resolve`) when it fetches them, so a presigned URL is fresh.
    ``directory``: the URI names a directory (``s3://bucket/prefix/``, ``hf://org/name@rev``),
    which is expanded (:func:`gpu_agent.remote.expand`) into one source per file, each checked
    again, before anything is fetched; the Fetcher refuses a directory.
    """

    uri: str
    scheme: str
    sha256: str
    path: Path | None = None
    url: str | None = None
    directory: bool = False

    @property
    def name(self) -> str:
        """The file name the source is cached under."""
        if self.path is not None:
            return self.path.name
        return PurePosixPath(urlsplit(self.url or self.uri).path).name or "blob"


class SourcePolicy:
    """Decides whether a URI may be fetched. No I/O beyond ``file://`` existence checks.

    ``s3://`` is allowed when ``remote.s3.allowed_buckets`` covers the bucket and key, ``hf://``
    when ``remote.hf.allowed_repos`` names the repository; without ``remote`` settings (or with
    empty lists, the default) both are refused, whatever ``schemes`` says. An ``hf://`` file needs
    no sha256 from the request (the Hub's listing supplies its sha256 or git blob sha1 and the
    Fetcher verifies it); an ``s3://`` object does when ``require_sha256`` is set, like https.

    Raises :class:`InvalidInput` for malformed URIs or sha256 values, :class:`PermissionDenied` for
    schemes, roots, prefixes, buckets or repositories that are not allowed and for ``..``
    segments, and :class:`NotFound` for a file:// source that does not exist.
    """

    def __init__(
        self,
        schemes: Sequence[str],
        *,
        file_roots: Sequence[str],
        http_prefixes: Sequence[str],
        require_sha256: bool,
        remote: RemoteSourcesConfig | None = None,
    ) -> None:
        self._schemes = frozenset(schemes)
        self._roots = tuple(Path(os.path.realpath(root)) for root in file_roots)
        self._prefixes = tuple(http_prefixes)
        self._require_sha256 = require_sha256
        self._remote = remote if remote is not None else RemoteSourcesConfig()

    def check(self, uri: str, sha256: str) -> CheckedSource:
        """Validate one source; see the class docstring for the errors."""
        if not uri:
            raise InvalidInput("source uri is empty")
        if len(uri) > MAX_URI_LEN:
            raise InvalidInput(f"source uri is longer than {MAX_URI_LEN} characters")
        digest = sha256.lower()
        if digest and not _SHA256.match(digest):
            raise InvalidInput(f"sha256 of {uri} must be 64 hex characters, got {sha256!r}")
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme in REMOTE_SCHEMES:
            return self._check_remote(uri, scheme, digest)
        if not digest and self._require_sha256:
            raise InvalidInput(f"source {uri} has no sha256 and the agent requires one")
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

    def _check_remote(self, uri: str, scheme: str, digest: str) -> CheckedSource:
        if scheme == "s3":
            if not self._remote.s3.allowed_buckets:
                raise PermissionDenied(
                    f"s3:// sources are off: remote.s3.allowed_buckets is empty (source {uri})"
                )
            directory = remote.s3_location(uri, self._remote).is_prefix
            if not directory and not digest and self._require_sha256:
                raise InvalidInput(f"source {uri} has no sha256 and the agent requires one")
        else:
            if not self._remote.hf.allowed_repos:
                raise PermissionDenied(
                    f"hf:// sources are off: remote.hf.allowed_repos is empty (source {uri})"
                )
            directory = remote.hf_location(uri, self._remote).is_directory
        return CheckedSource(uri=uri, scheme=scheme, sha256=digest, directory=directory)

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


@dataclass(frozen=True, slots=True)
class _Resume:
    """What ``<dest>.partial.resume`` records: the ``.partial`` holds the first ``nbytes`` of the
    source that had ``validator`` (ETag, else Last-Modified) and ``size`` bytes."""

    uri: str
    sha256: str
    validator: str
    size: int
    nbytes: int


class _Stop(Exception):
    """Another range of the same download failed; this one stops quietly."""


class Fetcher:
    """Copies a checked source to a file, verifying what is known about it.

    Verified: the request's sha256, and for remote files what their source says (the Hub's
    sha256 or git blob sha1, an S3 object's stored sha256, the size); any mismatch is
    :class:`DataLoss`.

    ``session`` is the HTTP boundary (a ``requests.Session``; tests point sources at a loopback
    server); ``remote`` the settings of s3://, hf:// and https header files and redirects
    (without them only plain http(s) and file:// sources can be fetched); ``environ`` where
    credentials come from when the settings name no Secret files; ``require_checksum``: refuse
    (:class:`InvalidInput`, before any byte is written) a remote file that neither the request
    nor its source gives a sha256 or git blob sha1 for (the agent's ``require_sha256``).

    On failure nothing is left at ``dest`` and the ``.partial`` file is removed, except after a
    :class:`TemporaryError` (a dropped connection, a failing server) from a server that answered
    ranges with an ETag or Last-Modified: then the verified first bytes stay in ``.partial`` with
    a ``.partial.resume`` record, and the next fetch of the same source to the same ``dest``
    continues from there (after checking that the validator did not change). A ``.partial``
    without that record (e.g. left by a killed process) is never trusted.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        parallel_ranges: int = 8,
        range_bytes: int = 64 * 1024**2,
        timeout_s: float = 30.0,
        remote: RemoteSourcesConfig | None = None,
        environ: Mapping[str, str] = os.environ,
        require_checksum: bool = False,
    ) -> None:
        self._session = session if session is not None else requests.Session()
        self._parallel = parallel_ranges
        self._range_bytes = range_bytes
        self._timeout_s = timeout_s
        self._remote = remote
        self._environ = environ
        self._require_checksum = require_checksum

    def fetch(
        self, source: CheckedSource, dest: Path, *, control: LoadControl, progress: Progress
    ) -> tuple[int, str]:
        """Fetch ``source`` to ``dest``; return its size and sha256.

        Raises :class:`DataLoss` when the content does not match what is known of it.
        """
        if source.directory:
            raise InvalidInput(f"{source.uri} is a directory; expand it into its files first")
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        record = partial.with_name(partial.name + RESUME_SUFFIX)
        dest.parent.mkdir(parents=True, exist_ok=True)
        keep = False
        try:
            if source.path is not None:
                record.unlink(missing_ok=True)
                digest = self._copy_file(source.path, partial, control=control, progress=progress)
                size = partial.stat().st_size
            else:
                try:
                    size, digest = self._download(
                        source, partial, record, control=control, progress=progress
                    )
                except TemporaryError:
                    keep = record.exists()
                    raise
            if source.sha256 and digest != source.sha256:
                raise DataLoss(
                    f"checksum mismatch for {source.uri}: expected sha256 {source.sha256}, "
                    f"got {digest}"
                )
            os.replace(partial, dest)
            return size, digest
        finally:
            if not keep:
                partial.unlink(missing_ok=True)
                record.unlink(missing_ok=True)

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

    def _locate(self, source: CheckedSource) -> remote.RemoteFile:
        plain = source.scheme in ("http", "https")
        if self._remote is None:
            if not plain:
                raise FailedPrecondition(
                    f"{source.uri}: this fetcher was built without remote source settings"
                )
            return remote.RemoteFile(uri=source.uri, path=source.name, url=source.url or "")
        return remote.resolve(
            source.uri, self._remote, session=self._session, environ=self._environ,
            timeout_s=self._timeout_s,
        )  # fmt: skip

    def _download(
        self,
        source: CheckedSource,
        partial: Path,
        record: Path,
        *,
        control: LoadControl,
        progress: Progress,
    ) -> tuple[int, str]:
        target = self._locate(source)
        if self._require_checksum and not (source.sha256 or target.sha256 or target.git_sha1):
            raise InvalidInput(
                f"{source.uri}: neither the request nor its source gives a sha256 (or git blob "
                "sha1) to verify it by, and the agent requires one (require_sha256)"
            )
        resume = _read_record(record, partial, source)
        # The record is only true of a .partial nobody writes to: drop it while this fetch runs
        # (a process killed now leaves a .partial without a record, which is not trusted).
        record.unlink(missing_ok=True)
        start = resume.nbytes if resume is not None else 0
        if resume is None:
            partial.unlink(missing_ok=True)
        if resume is not None and target.etag and target.etag != resume.validator:
            # The object's listing already shows that it changed since the .partial was written.
            partial.unlink(missing_ok=True)
            start, resume = 0, None
        transfer = _Transfer(
            lambda headers: self._request(target, headers=headers),
            range_bytes=self._range_bytes,
            parallel=self._parallel,
            source=source,
            target=target,
            partial=partial,
            record=record,
            control=control,
            progress=progress,
        )
        transfer.run(start, resume)
        control.checkpoint()
        digests = _digests_of(partial, control=control, git=target.git_sha1 is not None)
        size = partial.stat().st_size
        _verify(target, size=size, sha256=digests[0], git_sha1=digests[1])
        return size, digests[0]

    def _request(
        self, target: remote.RemoteFile, *, headers: Mapping[str, str]
    ) -> requests.Response:
        response = request_following(
            self._session, "GET", target.url, secret_headers=target.headers, headers=headers,
            redirect_hosts=target.redirect_hosts, timeout_s=self._timeout_s, what=target.uri,
        )  # fmt: skip
        if response.status_code >= 400 and response.status_code != 416:
            response.close()
            raise_for_status(response, f"source {target.uri}")
        return response


class _Transfer:
    """One download into ``.partial``: the first request, then the remaining ranges.

    The first request asks for the first range (from ``start`` when resuming). A 206 answer says
    the server takes ranges and tells the total size; the remaining ranges are then fetched in
    parallel. A 200 answer is the whole file, streamed. On a :class:`TemporaryError` the
    ``.partial`` is cut to its longest verified prefix and a resume record is written.
    """

    def __init__(
        self,
        request: Callable[[Mapping[str, str]], requests.Response],
        *,
        range_bytes: int,
        parallel: int,
        source: CheckedSource,
        target: remote.RemoteFile,
        partial: Path,
        record: Path,
        control: LoadControl,
        progress: Progress,
    ) -> None:
        self._request = request
        self._range_bytes = range_bytes
        self._parallel = parallel
        self._source = source
        self._target = target
        self._partial = partial
        self._record = record
        self._control = control
        self._progress = progress
        self._validator = ""
        self._size = -1
        self._done: dict[int, int] = {}
        """start -> end (exclusive) of ranges fully written."""
        self._lock = threading.Lock()

    def run(self, start: int, resume: _Resume | None) -> None:
        try:
            self._run(start, resume)
        except TemporaryError:
            self._keep_prefix()
            raise

    def _run(self, start: int, resume: _Resume | None) -> None:
        size = self._target.size
        if size == 0 or (resume is not None and size >= 0 and start >= size):
            # Nothing (more) to read: an empty file, or a kept prefix that is already whole.
            self._partial.touch()
            self._size = max(size, 0)
            return
        if resume is not None:
            # Until the server answers, the kept prefix is still what a later fetch resumes.
            self._validator, self._size, self._done[0] = resume.validator, resume.size, start
        first_end = start + self._range_bytes
        response = self._request({"Range": f"bytes={start}-{first_end - 1}"})
        with response:
            validator = _validator_of(response)
            if resume is not None and validator != resume.validator:
                response.close()
                self._restart()
                return
            self._validator = validator
            if response.status_code == 416:
                # The range starts at or past the end: the file is empty (S3 answers 416 for
                # bytes=0-... of an empty object) or the kept prefix is already whole.
                self._partial.touch()
                self._size = start
                return
            if response.status_code != 206:
                self._stream(response)
                return
            if resume is not None:
                self._progress(start)
            total = _total_size(response, start=start, uri=self._target.uri)
            if self._target.size >= 0 and total != self._target.size:
                raise DataLoss(
                    f"size mismatch for {self._target.uri}: its source says "
                    f"{self._target.size} bytes, the server has {total}"
                )
            self._size = total
            end = min(first_end, total)
            fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, total)
                self._write_range(fd, response, start, end, stop=None)
                self._remaining(fd, end, total)
            finally:
                os.close(fd)

    def _restart(self) -> None:
        # The source changed since the .partial was written: start over from byte 0.
        self._partial.unlink(missing_ok=True)
        self._done.clear()
        self._run(0, None)

    def _stream(self, response: requests.Response) -> None:
        # The server ignored the range (200): this response is the whole file.
        written = 0
        with self._partial.open("wb") as writer:
            try:
                for block in response.iter_content(HTTP_BLOCK_BYTES):
                    self._control.checkpoint()
                    writer.write(block)
                    written += len(block)
                    self._done[0] = written
                    self._progress(len(block))
            except requests.RequestException as error:
                raise TemporaryError(
                    f"download of {self._target.uri} broke off: {error}"
                ) from error
        self._size = written

    def _remaining(self, fd: int, begin: int, total: int) -> None:
        step = self._range_bytes
        starts = list(range(begin, total, step))
        if not starts:
            return
        stop = threading.Event()

        def fetch_range(first: int) -> None:
            last = min(first + step, total)
            if stop.is_set():
                raise _Stop
            with self._request({"Range": f"bytes={first}-{last - 1}"}) as response:
                if response.status_code != 206:
                    raise TemporaryError(f"{self._target.uri} ignored a range request")
                if self._validator and _validator_of(response) not in ("", self._validator):
                    raise TemporaryError(f"{self._target.uri} changed during the download")
                self._write_range(fd, response, first, last, stop=stop)

        workers = max(1, min(self._parallel, len(starts)))
        with ThreadPoolExecutor(workers, thread_name_prefix="range") as pool:
            futures = [pool.submit(fetch_range, s) for s in starts]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            # Stop the other ranges at their next block; the first error is reported.
            if any(f.exception() is not None for f in done):
                stop.set()
                for future in futures:
                    future.cancel()
        first = [f for f in done if f.exception() is not None]
        rest = [f for f in futures if not f.cancelled() and f.exception() is not None]
        for future in first + rest:
            error = future.exception()
            if error is not None and not isinstance(error, _Stop):
                raise error

    def _write_range(
        self,
        fd: int,
        response: requests.Response,
        first: int,
        last: int,
        *,
        stop: threading.Event | None,
    ) -> None:
        offset = first
        try:
            for block in response.iter_content(HTTP_BLOCK_BYTES):
                self._control.checkpoint()
                if stop is not None and stop.is_set():
                    raise _Stop
                block = block[: last - offset]
                os.pwrite(fd, block, offset)
                offset += len(block)
                self._progress(len(block))
                if offset >= last:
                    break
        except requests.RequestException as error:
            raise TemporaryError(f"download of {self._target.uri} broke off: {error}") from error
        if offset != last:
            raise TemporaryError(
                f"{self._target.uri}: short range response ({offset - first} of {last - first} "
                "bytes)"
            )
        with self._lock:
            self._done[first] = last

    def _keep_prefix(self) -> None:
        """Cut ``.partial`` to the bytes known good from 0 and record them for a later resume."""
        prefix = 0
        while prefix in self._done:
            prefix = self._done[prefix]
        if not self._validator or prefix <= 0 or not self._partial.exists():
            self._record.unlink(missing_ok=True)
            return
        os.truncate(self._partial, prefix)
        record = _Resume(
            uri=self._source.uri,
            sha256=self._source.sha256,
            validator=self._validator,
            size=self._size,
            nbytes=prefix,
        )
        scratch = self._record.with_name(self._record.name + ".tmp")
        scratch.write_text(json.dumps(_record_json(record)), encoding="utf-8")
        os.replace(scratch, self._record)


def _record_json(record: _Resume) -> dict[str, object]:
    return {
        "uri": record.uri,
        "sha256": record.sha256,
        "validator": record.validator,
        "size": record.size,
        "nbytes": record.nbytes,
    }


def _read_record(record: Path, partial: Path, source: CheckedSource) -> _Resume | None:
    """The resume record if it matches ``source`` and the ``.partial`` beside it, else None."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        resume = _Resume(
            uri=str(data["uri"]),
            sha256=str(data["sha256"]),
            validator=str(data["validator"]),
            size=int(data["size"]),
            nbytes=int(data["nbytes"]),
        )
        length = partial.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if resume.uri != source.uri or resume.sha256 != source.sha256 or length != resume.nbytes:
        return None
    return resume if resume.nbytes > 0 and resume.validator else None


def _validator_of(response: requests.Response) -> str:
    return response.headers.get("ETag") or response.headers.get("Last-Modified") or ""


def _total_size(response: requests.Response, *, start: int, uri: str) -> int:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
    if match is None or match.group(3) == "*" or int(match.group(1)) != start:
        raise TemporaryError(f"{uri} answered a range request without a usable Content-Range")
    return int(match.group(3))


def _verify(target: remote.RemoteFile, *, size: int, sha256: str, git_sha1: str | None) -> None:
    if target.size >= 0 and size != target.size:
        raise DataLoss(
            f"size mismatch for {target.uri}: its source says {target.size} bytes, got {size}"
        )
    if target.sha256 is not None and sha256 != target.sha256:
        raise DataLoss(
            f"checksum mismatch for {target.uri}: its source says sha256 {target.sha256}, "
            f"got {sha256}"
        )
    if target.git_sha1 is not None and git_sha1 != target.git_sha1:
        raise DataLoss(
            f"checksum mismatch for {target.uri}: its source says git blob sha1 "
            f"{target.git_sha1}, got {git_sha1}"
        )


def _digests_of(path: Path, *, control: LoadControl, git: bool) -> tuple[str, str | None]:
    """sha256 of the file and, with ``git``, its git blob id (sha1 of ``blob <size>\\0`` +
    content), in one read."""
    hasher = hashlib.sha256()
    blob = hashlib.sha1(usedforsecurity=False) if git else None
    if blob is not None:
        blob.update(b"blob %d\x00" % path.stat().st_size)
    with path.open("rb") as reader:
        while block := reader.read(COPY_BLOCK_BYTES):
            control.checkpoint()
            hasher.update(block)
            if blob is not None:
                blob.update(block)
    return hasher.hexdigest(), blob.hexdigest() if blob is not None else None
