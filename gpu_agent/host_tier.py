"""The host tier: model files in shared memory (``shm_dir``), mmap-able by inference processes.

Owns the tier's directories (a single-file model's ``<shm_dir>/<key>@<revision>/``, emptied at
start-up: its files belonged to the previous process; only what the agent marked as its own is
removed then, see :mod:`gpu_agent.tier_roots`), copying a model's disk files into it (the bytes
move in :mod:`gpu_agent.host_copy`), page-locking
them for GPU fills (``host_fill=registered``), removing them, and the free space beyond
``host_headroom_bytes``.

Directory models are the engines' hand-off: each revision is materialised read-only (files 0444,
directories 0555) at ``<shm_dir>/models/<slug>/<revision>/`` (:mod:`gpu_agent.model_dir` names
them), written under a hidden temporary name and renamed, so no process ever sees it half
written; ``<shm_dir>/models/<slug>/current`` is a relative symlink switched atomically (a new link
renamed over the old) to the newest complete revision, so a pod can name one fixed path. It
must not decide which model to drop to make room (:mod:`gpu_agent.reclaim` does) or touch the
registry of holdings.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from common.ids import ModelId
from gpu_agent.control import LoadControl
from gpu_agent.copy_engine import PinnedMapping
from gpu_agent.diskcache import model_key, remove_tree
from gpu_agent.host_copy import copy_into_host
from gpu_agent.model_dir import CURRENT_LINK, MODELS_SUBDIR, TreeFile, model_slug
from gpu_agent.sources import PARTIAL_SUFFIX
from gpu_agent.tier_roots import MARKER, is_owned, make_owned_dir, remove_if_only_marker

log = logging.getLogger(__name__)

READ_ONLY_FILE = 0o444
READ_ONLY_DIR = 0o555


class HostTier:
    """Shared-memory files under ``root`` (the ``shm_dir`` setting)."""

    def __init__(
        self, root: Path, *, headroom_bytes: int, host_fill: str, max_bytes: int | None = None
    ) -> None:
        self.root = root
        self._headroom = headroom_bytes
        self._host_fill = host_fill
        self._max_bytes = max_bytes
        self._layout = threading.Lock()
        """Held while the shared directories (``models/``, a model's base) are made or removed,
        so that one load never loses the directory another is about to write into."""

    def reset(self) -> None:
        """Remove what a previous agent left in the tier: the entries it marked as its own (and,
        in its ``models/``, the marked model directories); anything else stays. Processes that
        still map the files keep their mappings after unlink."""
        self.root.mkdir(parents=True, exist_ok=True)
        models = self.root / MODELS_SUBDIR
        for entry in sorted(self.root.iterdir()):
            if entry == models and is_owned(entry):
                for base in sorted(entry.iterdir()):
                    if is_owned(base):
                        # remove_tree makes read-only revision directories writable first.
                        remove_tree(base)
                    elif base.name != MARKER:
                        log.warning("not the agent's: left in place", extra={"path": str(base)})
                remove_if_only_marker(entry)
            elif is_owned(entry):
                remove_tree(entry)
            else:
                log.warning(
                    "not the agent's: left in place", extra={"path": str(entry), "tier": "host"}
                )

    def free_bytes(self) -> int:
        """Free space beyond the headroom, and within the tier's cap when it has one (negative
        when either is already eaten into)."""
        stats = os.statvfs(self.root)
        free = stats.f_bavail * stats.f_frsize - self._headroom
        if self._max_bytes is None:
            return free
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return min(free, self._max_bytes - used)

    def holds(self, paths: Sequence[Path]) -> bool:
        """Whether every one of ``paths`` lies in this tier."""
        return all(path.is_relative_to(self.root) for path in paths)

    def model_files_dir(self, model_id: ModelId, revision: str = "") -> Path:
        """A single-file model's directory in the tier (one per version)."""
        key = model_key(model_id)
        return self.root / (f"{key}@{revision}" if revision else key)

    def copy_in(
        self,
        model_id: ModelId,
        disk_files: Sequence[Path],
        *,
        revision: str = "",
        control: LoadControl,
        progress: Callable[[int], None],
        created: list[Path],
    ) -> list[Path]:
        """Copy a model's files in; its directory is appended to ``created`` first."""
        directory = self.model_files_dir(model_id, revision)
        created.append(directory)
        make_owned_dir(directory)
        paths = []
        for path in disk_files:
            dest = directory / path.name
            copy_into_host(path, dest, control=control, progress=progress)
            paths.append(dest)
        return paths

    # ------------------------------------------------------------------- directory models

    def model_base(self, model_id: ModelId) -> Path:
        """``<shm_dir>/models/<slug>/``: a directory model's revisions and its ``current`` link."""
        return self.root / MODELS_SUBDIR / model_slug(model_id)

    def revision_dir(self, model_id: ModelId, revision: str) -> Path:
        return self.model_base(model_id) / revision

    def current_link(self, model_id: ModelId) -> Path:
        return self.model_base(model_id) / CURRENT_LINK

    def materialise(
        self,
        model_id: ModelId,
        revision: str,
        tree: Sequence[TreeFile],
        *,
        control: LoadControl,
        progress: Callable[[int], None],
        created: list[Path],
    ) -> Path:
        """Copy a directory model's files to its read-only revision directory; return it.

        Written as ``.<revision>.partial`` and renamed when complete; both names are appended to
        ``created`` first (a failed load removes them). ``current`` is not touched: :meth:`publish`
        switches it once the whole load succeeded.
        """
        base = self.model_base(model_id)
        final = base / revision
        staging = base / f".{revision}{PARTIAL_SUFFIX}"
        created.append(staging)
        with self._layout:
            make_owned_dir(base.parent)
            make_owned_dir(base)
            remove_tree(staging)  # left by a killed agent only (reset empties the tier at start-up)
            staging.mkdir()
        for item in tree:
            dest = staging / item.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            copy_into_host(item.disk_path, dest, control=control, progress=progress)
        control.checkpoint()
        for directory, _, files in os.walk(staging, topdown=False):
            for name in files:
                os.chmod(os.path.join(directory, name), READ_ONLY_FILE)
            os.chmod(directory, READ_ONLY_DIR)
        created.append(final)
        os.rename(staging, final)
        return final

    def publish(self, model_id: ModelId, revision: str) -> Path:
        """Point ``current`` at ``revision`` (atomically: a new link renamed over the old one)."""
        link = self.current_link(model_id)
        staging = link.with_name(f".{CURRENT_LINK}.{os.getpid()}{PARTIAL_SUFFIX}")
        staging.unlink(missing_ok=True)
        # Relative, so the link resolves wherever the pod mounts shm_dir.
        staging.symlink_to(revision, target_is_directory=True)
        os.replace(staging, link)
        return link

    def remove_revision(
        self, model_id: ModelId, revision: str, pinned: Mapping[Path, PinnedMapping]
    ) -> int:
        """Unpin and delete one revision directory; ``current`` goes too when it pointed there
        (a pod then finds no directory rather than a dangling link). The bytes freed."""
        unpin(pinned)
        base = self.model_base(model_id)
        link = base / CURRENT_LINK
        if link.is_symlink() and os.readlink(link) == revision:
            link.unlink(missing_ok=True)
        freed = remove_tree(base / revision)
        self.tidy(model_id)
        return freed

    def tidy(self, model_id: ModelId) -> None:
        """Remove a directory model's base, and ``models/``, once nothing but the agent's marker
        is left in them (no revision, no link)."""
        base = self.model_base(model_id)
        with self._layout:
            remove_if_only_marker(base)
            remove_if_only_marker(base.parent)

    def pin(self, paths: Sequence[Path], *, gpu_usable: bool) -> dict[Path, PinnedMapping]:
        """Page-lock the files so later GPU fills DMA from them; ``{}`` when that is not done.

        Only with ``host_fill=registered`` and a usable CUDA GPU.
        """
        if self._host_fill != "registered" or not gpu_usable or not torch.cuda.is_available():
            return {}
        pinned: dict[Path, PinnedMapping] = {}
        try:
            for path in paths:
                pinned[path] = PinnedMapping(path)
        except RuntimeError:
            # Page-locking can fail: RLIMIT_MEMLOCK, or shm_dir not on tmpfs (Linux >= 6.5
            # refuses long-term write pins of file-backed pages outside shmem). The model stays
            # in host memory and its GPU fills copy through the pinned staging buffers instead.
            unpin(pinned)
            return {}
        return pinned

    def remove(
        self, model_id: ModelId, pinned: Mapping[Path, PinnedMapping], *, revision: str = ""
    ) -> int:
        """Unpin and delete a single-file model's files (of one version); the bytes freed."""
        unpin(pinned)
        return remove_tree(self.model_files_dir(model_id, revision))


def unpin(pinned: Mapping[Path, PinnedMapping]) -> None:
    """Release page-locked mappings."""
    for mapping in pinned.values():
        mapping.close()
