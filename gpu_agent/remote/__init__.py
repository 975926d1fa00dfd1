"""Remote sources of model files: S3 (and S3-compatible servers), the Hugging Face Hub, https.

The API the rest of the agent uses, and keeps stable:

- :class:`RemoteFile` -- one file: ``uri``, ``path`` (relative to the model directory), ``url``
  (a plain https GET downloads it; ranges allowed), ``headers`` (secrets, for ``url``'s origin
  only), ``size`` (-1 unknown), ``sha256`` / ``git_sha1`` (when known), ``etag``,
  ``redirect_hosts``.
- :func:`is_directory` -- whether a URI names a directory (``hf://org/name@rev``,
  ``hf://org/name@rev/folder/``, ``s3://bucket/prefix/``) or one object.
- :func:`expand` -- a directory URI to its files (one listing request, plus a HEAD per S3 object).
- :func:`resolve` -- one object URI (``s3://bucket/key``, ``hf://org/name@rev/file``,
  ``https://...``) to its file; for S3 a fresh presigned URL, so call it again rather than keep a
  URL for hours.

Both check the s3/hf allow-lists of the settings again (the source policy checked them first) and
raise the error taxonomy of :mod:`common.errors`: :class:`InvalidInput` (malformed URI),
:class:`PermissionDenied` (not allowed, credentials refused, a listed path that is not a plain
relative path), :class:`NotFound`, :class:`FailedPrecondition` (the agent's own settings or Secret
mounts are wrong), :class:`TemporaryError` (server unreachable or failing). Nothing here writes a
file; :class:`gpu_agent.sources.Fetcher` downloads and verifies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import requests

from common.errors import InvalidInput, PermissionDenied
from gpu_agent.config import RemoteSourcesConfig
from gpu_agent.remote import hf, s3
from gpu_agent.remote.http import host_key, read_header_file
from gpu_agent.remote.types import RemoteFile, check_relative_path

__all__ = ["RemoteFile", "check_relative_path", "expand", "is_directory", "resolve"]


def _scheme(uri: str) -> str:
    return urlsplit(uri).scheme.lower()


def is_directory(uri: str) -> bool:
    """Whether ``uri`` names a directory of files (see the module docstring); no I/O."""
    scheme = _scheme(uri)
    if scheme == "hf":
        return hf.parse_hf_uri(uri).is_directory
    if scheme == "s3":
        return s3.parse_s3_uri(uri).is_prefix
    return False


def s3_location(uri: str, config: RemoteSourcesConfig) -> s3.S3Location:
    """The parsed ``s3://`` URI; :class:`PermissionDenied` unless ``allowed_buckets`` covers it."""
    location = s3.parse_s3_uri(uri)
    if not s3.bucket_allowed(location, config.s3.allowed_buckets):
        raise PermissionDenied(
            f"source {uri}: bucket {location.bucket} (key {location.key!r}) is not covered by "
            "remote.s3.allowed_buckets"
        )
    return location


def hf_location(uri: str, config: RemoteSourcesConfig) -> hf.HfLocation:
    """The parsed ``hf://`` URI, or :class:`PermissionDenied` unless ``allowed_repos`` names it."""
    location = hf.parse_hf_uri(uri)
    hf.check_allowed(location, config.hf, uri=uri)
    return location


def expand(
    uri: str,
    config: RemoteSourcesConfig,
    *,
    session: requests.Session | None = None,
    environ: Mapping[str, str] = os.environ,
    timeout_s: float = 30.0,
) -> list[RemoteFile]:
    """The files of a directory URI, each with its path relative to that directory.

    ``hf://org/name@rev`` lists every file of the revision (``RemoteFile.uri`` then names the
    commit, so all files come from one snapshot); ``s3://bucket/prefix/`` lists every object under
    the prefix (keys ending in ``/`` skipped). The caller picks which of them to fetch (e.g. leave
    out ``*.bin`` when ``*.safetensors`` are there). Raises :class:`InvalidInput` for a URI that
    is not a directory (see :func:`is_directory`).
    """
    scheme = _scheme(uri)
    if scheme == "hf":
        client = hf.HubClient(config.hf, session=session, environ=environ, timeout_s=timeout_s)
        return client.expand(hf_location(uri, config))
    if scheme == "s3":
        s3_client = s3.S3Client(config.s3, session=session, environ=environ, timeout_s=timeout_s)
        return s3_client.expand(s3_location(uri, config))
    raise InvalidInput(f"{uri} is not a directory source (hf://org/name@rev or s3://bucket/dir/)")


def resolve(
    uri: str,
    config: RemoteSourcesConfig,
    *,
    session: requests.Session | None = None,
    environ: Mapping[str, str] = os.environ,
    timeout_s: float = 30.0,
) -> RemoteFile:
    """The one file ``uri`` names, ready to GET.

    ``s3://bucket/key``: a HEAD (size, ETag, stored sha256 when the object was uploaded with one)
    and a fresh presigned GET URL. ``hf://org/name@rev/path``: the revision's listing entry (one
    request). ``http(s)://``: no request; headers from ``remote.https.header_files`` for its host
    and ``remote.https.allowed_redirect_hosts``; size unknown (-1). Raises :class:`InvalidInput`
    for a directory URI.
    """
    scheme = _scheme(uri)
    if scheme == "hf":
        client = hf.HubClient(config.hf, session=session, environ=environ, timeout_s=timeout_s)
        return client.resolve(hf_location(uri, config))
    if scheme == "s3":
        s3_client = s3.S3Client(config.s3, session=session, environ=environ, timeout_s=timeout_s)
        return s3_client.resolve(s3_location(uri, config))
    if scheme in ("http", "https"):
        host = host_key(uri)
        header_file = config.https.header_files.get(host)
        headers = read_header_file(header_file, host=host) if header_file else {}
        return RemoteFile(
            uri=uri,
            path=PurePosixPath(urlsplit(uri).path).name or "blob",
            url=uri,
            headers=headers,
            redirect_hosts=tuple(config.https.allowed_redirect_hosts),
        )
    raise InvalidInput(f"{uri}: scheme {scheme!r} is not a remote source")
