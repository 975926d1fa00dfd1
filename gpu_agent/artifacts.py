"""Installing compiled artifacts where an inference pod's torch.compile will find them.

Owns two kinds: the bytes of ``torch.compiler.save_cache_artifacts()`` (a "mega-cache", installed
as one file the pod passes to ``torch.compiler.load_cache_artifacts``), and tar archives of an
Inductor/Triton cache directory, unpacked into the pod's ``TORCHINDUCTOR_CACHE_DIR``. Installs are
atomic per file and refuse archive members that would land outside the install directory. It must
not run torch.compile itself.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common.errors import DataLoss, InvalidInput, PermissionDenied
from common.ids import ModelId

MEGA_CACHE_SUFFIX = ".mega-cache"


def check_install_dir(install_dir: str, allowed_roots: Sequence[str]) -> Path:
    """``install_dir`` resolved; :class:`PermissionDenied` unless under an allowed root."""
    if not install_dir:
        raise InvalidInput("artifact install_dir is empty")
    if not install_dir.startswith("/"):
        raise InvalidInput(f"artifact install_dir {install_dir!r} must be absolute")
    if ".." in Path(install_dir).parts:
        raise PermissionDenied(f"artifact install_dir {install_dir!r} contains '..'")
    resolved = Path(os.path.realpath(install_dir))
    roots = [Path(os.path.realpath(root)) for root in allowed_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PermissionDenied(f"artifact install_dir {install_dir} is outside the allowed roots")
    return resolved


def mega_cache_path(install_dir: Path, model_id: ModelId) -> Path:
    """Where the mega-cache of ``model_id`` is installed under ``install_dir``."""
    return install_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", model_id) + MEGA_CACHE_SUFFIX)


def install_mega_cache(blob: Path, install_dir: Path, *, model_id: ModelId) -> Path:
    """Copy the fetched artifact bytes into place (atomically); return the installed path."""
    install_dir.mkdir(parents=True, exist_ok=True)
    target = mega_cache_path(install_dir, model_id)
    with tempfile.NamedTemporaryFile(dir=install_dir, prefix=".prewarm-", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        shutil.copyfile(blob, tmp_path)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)
    return target


def install_cache_tar(archive: Path, install_dir: Path) -> list[Path]:
    """Unpack an Inductor/Triton cache archive into ``install_dir``; return the files installed.

    Members are extracted with tarfile's ``data`` filter (no absolute paths, no ``..``, no links
    leaving the directory, no device files) into a scratch directory beside the target, then each
    file is renamed into place, so a reader never sees a half-written cache entry. Existing files
    are replaced: cache entries are content-addressed, so the same name means the same content.
    """
    install_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=install_dir, prefix=".prewarm-"))
    installed = []
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
        except tarfile.FilterError as error:
            raise PermissionDenied(f"artifact archive has an unsafe member: {error}") from error
        except (tarfile.TarError, EOFError) as error:
            raise DataLoss(f"artifact archive is corrupt: {error}") from error
        for path in sorted(scratch.rglob("*")):
            if path.is_dir():
                continue
            target = install_dir / path.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            installed.append(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return installed
