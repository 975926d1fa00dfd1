"""The node-local disk tier: where a model's files live, its manifest, and start-up clean-up.

Owns the directory layout ``<cache_dir>/models/<key>@<revision>/`` (``key`` derives from the model
id, so any id is a safe directory name; the revision names the version of the weights, see
:mod:`gpu_agent.versions`; a directory model's files lie under ``tree/`` at their paths), the
manifest written last and atomically (a directory without one is incomplete; a version replaced
while leases still read it has its manifest renamed to ``manifest.retired``, so a restart drops
it), and :meth:`DiskCache.recover`, which removes whatever a killed agent left behind, and only
that: every model directory the agent makes carries its marker (:mod:`gpu_agent.tier_roots`), and
unmarked entries are left alone. It must not fetch or validate sources (see
:mod:`gpu_agent.sources`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.ids import ModelId
from gpu_agent.sources import PARTIAL_SUFFIX
from gpu_agent.tier_roots import MARKER, is_owned, make_owned_dir

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RETIRED_MANIFEST = "manifest.retired"
TREE = "tree"
"""A directory model's files lie under ``<model dir>/tree/`` at their paths (so a model file
named ``manifest.json`` cannot collide with the cache's own)."""


def model_key(model_id: ModelId) -> str:
    """A directory name for ``model_id``: a readable slug plus a hash (ids may contain ``/``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", model_id)[:48].strip(".") or "model"
    return f"{slug}-{hashlib.sha256(model_id.encode()).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class CachedFile:
    """A complete, verified file in the disk tier: ``name`` relative to the model's cache
    directory; ``path`` its path inside a directory model (empty for a single-file model)."""

    name: str
    sha256: str
    size_bytes: int
    path: str = ""


@dataclass(slots=True)
class Manifest:
    """What a complete model directory holds."""

    model_id: str
    files: list[CachedFile] = field(default_factory=list)
    predicted_value: float = 0.0
    revision: str = ""
    """The version's name (:mod:`gpu_agent.versions`; empty: cached before versions were)."""
    digest: str = ""
    """:func:`gpu_agent.versions.weights_digest` of the weights (empty: not recorded)."""


class DiskCache:
    """The disk tier rooted at ``root`` (the ``cache_dir`` setting)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models_dir = root / "models"

    def model_dir(self, model_id: ModelId, revision: str = "") -> Path:
        """The cache directory of ``model_id`` (at ``revision``, for a directory model)."""
        key = model_key(model_id)
        return self.models_dir / (f"{key}@{revision}" if revision else key)

    def make_model_dir(self, model_id: ModelId, revision: str = "") -> bool:
        """Create (and mark as the agent's) the directory of ``model_id`` at ``revision``;
        whether it was created now."""
        return make_owned_dir(self.model_dir(model_id, revision))

    def write_manifest(self, model_id: ModelId, manifest: Manifest) -> None:
        """Mark the model's directory complete (atomic rename of the manifest)."""
        directory = self.model_dir(model_id, manifest.revision)
        partial = directory / (MANIFEST + PARTIAL_SUFFIX)
        data = {
            "model_id": manifest.model_id,
            "predicted_value": manifest.predicted_value,
            "revision": manifest.revision,
            "digest": manifest.digest,
            "files": [asdict(f) for f in manifest.files],
        }
        partial.write_text(json.dumps(data), encoding="utf-8")
        os.replace(partial, directory / MANIFEST)

    def read_manifest(self, directory: Path) -> Manifest | None:
        """The manifest of ``directory`` if it is complete and every file is there at its size."""
        try:
            data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
            manifest = Manifest(
                model_id=str(data["model_id"]),
                predicted_value=float(data.get("predicted_value", 0.0)),
                files=[CachedFile(**f) for f in data["files"]],
                revision=str(data.get("revision", "")),
                digest=str(data.get("digest", "")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        for cached in manifest.files:
            path = directory / cached.name
            if not path.is_file() or path.stat().st_size != cached.size_bytes:
                return None
        return manifest

    def remove(self, model_id: ModelId, revision: str = "") -> int:
        """Delete the model's directory (at ``revision``); return the bytes freed."""
        return _remove_tree(self.model_dir(model_id, revision))

    def retire(self, model_id: ModelId, revision: str) -> None:
        """Mark a version that leases still read as no longer the model's (its files stay until
        :meth:`remove`); a restart, which ends every lease, removes it."""
        directory = self.model_dir(model_id, revision)
        with contextlib.suppress(FileNotFoundError):
            os.replace(directory / MANIFEST, directory / RETIRED_MANIFEST)

    def reinstate(self, model_id: ModelId, revision: str) -> None:
        """Undo :meth:`retire`: the version is the model's again."""
        directory = self.model_dir(model_id, revision)
        with contextlib.suppress(FileNotFoundError):
            os.replace(directory / RETIRED_MANIFEST, directory / MANIFEST)

    def recover(self) -> list[Manifest]:
        """Remove partial files and incomplete directories; return the complete models.

        Run at start-up, before serving: a killed agent may have left ``*.partial`` files, a
        directory without a manifest, or a retired version. Only the agent's own entries are
        touched: a complete model directory (its manifest names it) or one carrying the marker;
        anything else in ``models/`` is logged and left as it is.
        """
        self.models_dir.mkdir(parents=True, exist_ok=True)
        complete = []
        for directory in sorted(self.models_dir.iterdir()):
            manifest = self.read_manifest(directory) if directory.is_dir() else None
            expected = (
                self.model_dir(ModelId(manifest.model_id), manifest.revision).name
                if manifest is not None
                else None
            )
            ours = expected == directory.name or is_owned(directory)
            if not ours:
                log.warning(
                    "not the agent's: left in place",
                    extra={"path": str(directory), "tier": "disk"},
                )
                continue
            if manifest is None or expected != directory.name:
                _remove_tree(directory)
                continue
            keep = {directory / MANIFEST, directory / MARKER}
            keep |= {directory / f.name for f in manifest.files}
            for entry in sorted(directory.rglob("*"), reverse=True):
                # Deepest first: stray files (a killed fetch's .partial), then emptied directories.
                if entry.is_dir() and not entry.is_symlink():
                    if not any(entry.iterdir()):
                        entry.rmdir()
                elif entry not in keep:
                    _remove_tree(entry)
            complete.append(manifest)
        return complete

    def free_bytes(self) -> int:
        usage = shutil.disk_usage(self.root)
        return usage.free


def _remove_tree(path: Path) -> int:
    if not path.exists() and not path.is_symlink():
        return 0
    if path.is_dir() and not path.is_symlink():
        freed = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        # The host tier's model directories are read-only (0555): a non-root owner can delete
        # their entries only after giving itself write permission on each directory again.
        for directory, _, _ in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o755)
        shutil.rmtree(path, ignore_errors=True)
        return freed
    freed = path.stat().st_size if path.is_file() else 0
    path.unlink(missing_ok=True)
    return freed


def remove_tree(path: Path) -> int:
    """Delete a file or directory tree; return the bytes freed (0 if it did not exist)."""
    return _remove_tree(path)
