"""The host tier: model files in shared memory (``shm_dir``), mmap-able by inference processes.

Owns the tier's directory (``<shm_dir>/<key>/``, emptied at start-up: its files belonged to the
previous process), copying a model's disk files into it, page-locking them for GPU fills
(``host_fill=registered``), removing them, and the free space beyond ``host_headroom_bytes``. It
must not decide which model to drop to make room (:mod:`gpu_agent.reclaim` does) or touch the
registry of holdings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from common.ids import ModelId
from gpu_agent.control import LoadControl
from gpu_agent.copy_engine import PinnedMapping
from gpu_agent.diskcache import model_key, remove_tree
from gpu_agent.sources import copy_with_progress


class HostTier:
    """Shared-memory files under ``root`` (the ``shm_dir`` setting)."""

    def __init__(
        self, root: Path, *, headroom_bytes: int, host_fill: str, max_bytes: int | None = None
    ) -> None:
        self.root = root
        self._headroom = headroom_bytes
        self._host_fill = host_fill
        self._max_bytes = max_bytes

    def reset(self) -> None:
        """Empty the tier. Processes that still map its files keep their mappings after unlink."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

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

    def copy_in(
        self,
        model_id: ModelId,
        disk_files: Sequence[Path],
        *,
        control: LoadControl,
        progress: Callable[[int], None],
        created: list[Path],
    ) -> list[Path]:
        """Copy a model's files in; its directory is appended to ``created`` first."""
        directory = self.root / model_key(model_id)
        created.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for path in disk_files:
            dest = directory / path.name
            copy_with_progress(path, dest, control=control, progress=progress)
            paths.append(dest)
        return paths

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

    def remove(self, model_id: ModelId, pinned: Mapping[Path, PinnedMapping]) -> int:
        """Unpin and delete a model's files; the bytes freed."""
        unpin(pinned)
        return remove_tree(self.root / model_key(model_id))


def unpin(pinned: Mapping[Path, PinnedMapping]) -> None:
    """Release page-locked mappings."""
    for mapping in pinned.values():
        mapping.close()
