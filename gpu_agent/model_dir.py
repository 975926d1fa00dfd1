"""Directory models: the rules for a model that is a whole directory, not one weights file.

Owns what a directory model's request may say and how its node paths are named: the relative
path of each file (:func:`check_relpath`), the revision's name (:func:`check_revision`, or
:func:`digest_revision` when the request names none), the model's slug in
``<shm_dir>/models/<slug>/`` (:func:`model_slug`), and :func:`directory_entries`, the one place a
directory's file list is produced from a Preload's sources. Pure: no I/O, no tiers, no gRPC.

The seam for remote listings: a directory-like URI (``hf://org/name@rev``, ``s3://bucket/prefix/``)
is expanded into one entry per file by ``gpu_agent.remote.expand(uri, config)``, whose
``RemoteFile(uri, path, size, sha256, git_sha1)`` maps onto :class:`DirectoryEntry` (``path``,
``uri`` -- the file's own URI, not its download URL: the Fetcher resolves it again, so an S3 URL
is freshly signed -- ``size_bytes=max(size, 0)``, ``sha256`` or ``""`` for a file the Hub verifies
by its git blob sha1). Such an expansion plugs in through :data:`Expander`, called by
:func:`directory_entries` for a source without a ``path``; the agent's is
:mod:`gpu_agent.expansion`. A Preload may also list every file itself (the catalog's ``weights``
entries with ``path``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.errors import InvalidInput

MAX_RELPATH_LEN = 512
MAX_FILES = 10_000
"""More files than any model repository has (the largest hold a few hundred shards)."""
MAX_REVISION_LEN = 64
CURRENT_LINK = "current"
"""The stable link in ``<shm_dir>/models/<slug>/`` to the newest complete revision."""
MODELS_SUBDIR = "models"
"""Where directory models live under the host tier's root (``<shm_dir>/models/``)."""

_SEGMENT = re.compile(r"^[A-Za-z0-9._+=@-]+$")
_REVISION = re.compile(r"^[A-Za-z0-9._-]+$")
_SLUG_OTHER = re.compile(r"[^A-Za-z0-9._-]")
WEIGHT_SUFFIX = ".safetensors"


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One file of a directory model: where it lies in the directory and where it comes from."""

    path: str
    uri: str
    sha256: str
    size_bytes: int = 0

    @property
    def is_weights(self) -> bool:
        """Whether the agent reads it as safetensors (and loads it into the faster tiers)."""
        return self.path.endswith(WEIGHT_SUFFIX)


@dataclass(frozen=True, slots=True)
class TreeFile:
    """One file of a held directory model: its path in the directory, where its copy lies in a
    tier (the disk cache's ``tree/``), its size."""

    path: str
    disk_path: Path
    size_bytes: int

    @property
    def is_weights(self) -> bool:
        return self.path.endswith(WEIGHT_SUFFIX)


Expander = Callable[[str, str], list[DirectoryEntry] | None]
"""``expander(uri, sha256)``: the file list of a directory-like source, or ``None`` when ``uri``
is one file (see the module docstring)."""


def check_relpath(path: str) -> str:
    """``path`` as a safe relative path inside a model directory; :class:`InvalidInput` if not.

    Refused: empty, absolute, longer than :data:`MAX_RELPATH_LEN`, backslashes, empty / ``.`` /
    ``..`` segments, characters other than letters, digits and ``. _ - + = @`` in a segment, and a
    segment named like the agent's own temporary files (``*.partial``).
    """
    if not path:
        raise InvalidInput("a directory file's path is empty; give its path inside the model")
    shown = path[:80]
    if len(path) > MAX_RELPATH_LEN:
        raise InvalidInput(f"path {shown!r}... is longer than {MAX_RELPATH_LEN} characters")
    if path.startswith("/"):
        raise InvalidInput(f"path {shown!r} is absolute; give it relative to the model directory")
    if "\\" in path:
        raise InvalidInput(f"path {shown!r} contains a backslash; separate directories with '/'")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidInput(
                f"path {shown!r} has an empty, '.' or '..' segment; paths must stay inside the "
                "model directory"
            )
        if not _SEGMENT.match(segment):
            raise InvalidInput(
                f"path {shown!r}: segment {segment[:64]!r} may contain only letters, digits "
                "and . _ - + = @"
            )
        if segment.endswith(".partial"):
            raise InvalidInput(f"path {shown!r}: names ending in .partial are reserved")
    return path


def check_entries(entries: Sequence[DirectoryEntry]) -> None:
    """Every path valid, none twice, no file where another needs a directory; at least one weights
    file is not required (a tokenizer-only directory is a directory too)."""
    if len(entries) > MAX_FILES:
        raise InvalidInput(f"a directory model has at most {MAX_FILES} files; got {len(entries)}")
    seen: set[str] = set()
    for entry in entries:
        check_relpath(entry.path)
        if entry.path in seen:
            raise InvalidInput(f"path {entry.path!r} is listed twice")
        seen.add(entry.path)
    for entry in entries:
        for parent in PurePosixPath(entry.path).parents:
            if str(parent) in seen:
                raise InvalidInput(
                    f"{parent} is listed as a file, but {entry.path!r} needs it to be a directory"
                )


def check_revision(revision: str) -> str:
    """A revision's directory name: 1..64 letters, digits and ``. _ -``, not ``.``/``..``/
    ``current``; :class:`InvalidInput` otherwise."""
    if len(revision) > MAX_REVISION_LEN:
        raise InvalidInput(f"revision is longer than {MAX_REVISION_LEN} characters")
    if not _REVISION.match(revision) or revision in (".", "..", CURRENT_LINK):
        raise InvalidInput(
            f"revision {revision[:64]!r} may contain only letters, digits and . _ - "
            f"(and is not '.', '..' or {CURRENT_LINK!r})"
        )
    if revision.startswith("."):
        raise InvalidInput(f"revision {revision!r} must not start with '.' (hidden names are ours)")
    return revision


def digest_revision(entries: Sequence[DirectoryEntry]) -> str:
    """The revision of a directory no request named: 16 hex digits of the sorted (path, sha256)
    list, so the same files always land in the same revision directory."""
    hasher = hashlib.sha256()
    for path, sha in sorted((e.path, e.sha256) for e in entries):
        hasher.update(f"{path}\0{sha}\n".encode())
    return hasher.hexdigest()[:16]


def model_slug(model_id: str) -> str:
    """The model's directory name under ``<shm_dir>/models/``, readable enough to write into a pod
    spec: ``/`` becomes ``--`` (as in the Hub's cache), any other character outside letters,
    digits and ``. _ -`` becomes ``_``, and a leading ``.`` becomes ``_`` (``org/name:v1`` ->
    ``org--name_v1``). Two held models with the same slug are refused by the agent."""
    slug = _SLUG_OTHER.sub("_", model_id.replace("/", "--"))
    if slug.startswith("."):
        slug = "_" + slug[1:]
    return slug or "_"


def directory_entries(
    sources: Sequence[tuple[str, str, str, int]], *, expand: Expander | None = None
) -> list[DirectoryEntry] | None:
    """The file list of a Preload's ``(uri, sha256, path, size_bytes)`` sources, or ``None`` when
    it is not a directory model (no source has a path and no expander takes them).

    Sources with a path are one file each. A source without one, next to sources with one, is
    refused; alone it is a directory-like URI that ``expand`` lists (see the module docstring),
    or, without an expander, a plain single-file model.
    """
    with_path = [s for s in sources if s[2]]
    if with_path and len(with_path) != len(sources):
        raise InvalidInput(
            "either every weights source has a path (a directory model) or none has; "
            f"{len(sources) - len(with_path)} of {len(sources)} have none"
        )
    if with_path:
        entries = [DirectoryEntry(path, uri, sha, size) for uri, sha, path, size in sources]
    else:
        listed = [expand(uri, sha) for uri, sha, _, _ in sources] if expand is not None else []
        if not any(item is not None for item in listed):
            return None
        if len(sources) != 1:
            raise InvalidInput("a directory-like source must be the Preload's only source")
        entries = listed[0] or []
    check_entries(entries)
    return entries
