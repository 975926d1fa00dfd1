"""Filling one device allocation from safetensors files: pinned staging, parallel reads, streams.

Owns the host->device fill: each worker thread owns two pinned staging buffers and one CUDA stream;
it reads a chunk with ``preadv`` (GIL released) into one buffer while the copy of the previous chunk
from the other buffer runs on its stream, so disk/page-cache reads and H2D copies overlap across
``workers`` streams. On a CPU destination (hosts without a GPU, tests) it reads straight into the
destination. It must not decide placement or evict anything.

CUDA quirks handled here:
- ``copy_(non_blocking=True)`` from *pinned* memory is a true async DMA; from pageable memory it is
  staged synchronously by the driver, which is why the staging buffers are pinned.
- A staging buffer may only be refilled after the copy that reads it completed: each buffer has an
  event recorded on its stream after the copy, and the reader waits on it before ``preadv``.
- Pinned allocation (cudaHostAlloc) is slow (~0.3 s/GB) so the pool is made once per agent and
  reused across loads.

A second path, :func:`fill_registered`, serves sources already in host shared memory: the file is
mapped MAP_SHARED and page-locked in place (:class:`PinnedMapping`), and the copy engines DMA
straight from it, with no staging memcpy. Which one a load uses is the ``host_fill`` setting.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import DataLoss
from gpu_agent.control import LoadControl
from gpu_agent.safetensors_format import SafetensorsLayout

ALIGN_BYTES = 256
"""Each file's data section starts at a multiple of this in the model's allocation (cudaMalloc's
own alignment), so every tensor view is aligned as its dtype requires."""

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a file's data section goes in the model's one allocation."""

    source: Path
    layout: SafetensorsLayout
    base: int


def plan_placements(
    layouts: Sequence[SafetensorsLayout], sources: Sequence[Path]
) -> tuple[int, list[Placement]]:
    """Total allocation size and each file's base offset (aligned to :data:`ALIGN_BYTES`)."""
    offset = 0
    placements = []
    for layout, source in zip(layouts, sources, strict=True):
        offset = _align(offset)
        placements.append(Placement(source=source, layout=layout, base=offset))
        offset += layout.data_bytes
    return max(offset, 1), placements


def _align(value: int) -> int:
    return (value + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


@dataclass(frozen=True, slots=True)
class _Chunk:
    source: Path
    file_offset: int
    dest_offset: int
    nbytes: int


class StagingPool:
    """Pinned staging buffers and CUDA streams, made once and reused by every fill.

    ``workers`` threads each get two buffers of ``chunk_bytes``. One fill runs at a time.
    """

    def __init__(self, chunk_bytes: int, *, workers: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.workers = workers
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._device: torch.device | None = None
        self._streams: list[Any] = []
        self.lock = threading.Lock()

    def ensure(self, device: torch.device) -> None:
        """Allocate the pinned buffers and the streams for ``device`` (first call only)."""
        if self._buffers is not None and self._device == device:
            return
        self._buffers = [
            (
                torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True),
                torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True),
            )
            for _ in range(self.workers)
        ]
        self._streams = [
            torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
            for _ in range(self.workers)
        ]
        self._device = device

    def worker(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], Any]:
        assert self._buffers is not None
        return self._buffers[index], self._streams[index]


def fill(
    dest: torch.Tensor,
    placements: Sequence[Placement],
    *,
    pool: StagingPool,
    control: LoadControl,
    progress: Callable[[int], None],
) -> float:
    """Copy every placement's data section into ``dest`` (uint8, 1-D); return seconds taken.

    ``dest`` may live on a CUDA device (staged, overlapped) or on the CPU (direct reads).
    Stops at the next chunk with :class:`LoadCancelled`/:class:`DeadlineExceeded` from ``control``.
    """
    chunks = [
        _Chunk(
            source=p.source,
            file_offset=p.layout.data_start + start,
            dest_offset=p.base + start,
            nbytes=min(pool.chunk_bytes, p.layout.data_bytes - start),
        )
        for p in placements
        for start in range(0, p.layout.data_bytes, pool.chunk_bytes)
    ]
    started = time.perf_counter()
    with pool.lock:
        if dest.is_cuda:
            pool.ensure(dest.device)
        _run_workers(dest, chunks, pool=pool, control=control, progress=progress)
    return time.perf_counter() - started


def _run_workers(
    dest: torch.Tensor,
    chunks: Sequence[_Chunk],
    *,
    pool: StagingPool,
    control: LoadControl,
    progress: Callable[[int], None],
) -> None:
    next_index = iter(range(len(chunks)))
    take_lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def take() -> _Chunk | None:
        with take_lock:
            index = next(next_index, None)
        return None if index is None or stop.is_set() else chunks[index]

    def work(worker_index: int) -> None:
        fds: dict[Path, int] = {}
        try:
            if dest.is_cuda:
                _cuda_worker(
                    dest,
                    worker_index,
                    take=take,
                    fds=fds,
                    pool=pool,
                    control=control,
                    progress=progress,
                )
            else:
                _cpu_worker(dest, take, fds=fds, control=control, progress=progress)
        except BaseException as error:  # noqa: BLE001 - re-raised by the caller's thread
            errors.append(error)
            stop.set()
        finally:
            for fd in fds.values():
                os.close(fd)

    threads = [
        threading.Thread(target=work, args=(i,), name=f"fill-{i}", daemon=True)
        for i in range(min(pool.workers, max(1, len(chunks))))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _fd(fds: dict[Path, int], path: Path) -> int:
    fd = fds.get(path)
    if fd is None:
        fd = fds[path] = os.open(path, os.O_RDONLY)
    return fd


def _read_exact(fd: int, view: memoryview, *, offset: int) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise DataLoss(f"a weights file ended {len(view) - done} bytes early (truncated?)")
        done += got


def _cpu_worker(
    dest: torch.Tensor,
    take: Callable[[], _Chunk | None],
    *,
    fds: dict[Path, int],
    control: LoadControl,
    progress: Callable[[int], None],
) -> None:
    target = dest.numpy().data
    while (chunk := take()) is not None:
        control.checkpoint()
        end = chunk.dest_offset + chunk.nbytes
        _read_exact(
            _fd(fds, chunk.source), target[chunk.dest_offset : end], offset=chunk.file_offset
        )
        progress(chunk.nbytes)


def _cuda_worker(
    dest: torch.Tensor,
    worker_index: int,
    *,
    take: Callable[[], _Chunk | None],
    fds: dict[Path, int],
    pool: StagingPool,
    control: LoadControl,
    progress: Callable[[int], None],
) -> None:
    buffers, stream = pool.worker(worker_index)
    views = [b.numpy().data for b in buffers]
    events: list[Any] = [None, None]
    pending: list[int] = []  # bytes copied but not yet confirmed complete, per buffer slot
    turn = 0
    with torch.cuda.device(dest.device):
        while (chunk := take()) is not None:
            control.checkpoint()
            slot = turn % 2
            turn += 1
            if events[slot] is not None:
                events[slot].synchronize()  # the copy reading this buffer has finished
                progress(pending.pop(0))
            _read_exact(
                _fd(fds, chunk.source), views[slot][: chunk.nbytes], offset=chunk.file_offset
            )
            with torch.cuda.stream(stream):
                end = chunk.dest_offset + chunk.nbytes
                dest[chunk.dest_offset : end].copy_(buffers[slot][: chunk.nbytes],
                                                    non_blocking=True)  # fmt: skip
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(stream)
                events[slot] = event
            pending.append(chunk.nbytes)
        stream.synchronize()
        for nbytes in pending:
            progress(nbytes)


class PinnedMapping:
    """A file in host shared memory mapped MAP_SHARED and page-locked (cudaHostRegister).

    Page-locked pages can be read by the GPU's copy engines directly, so a fill from them runs at
    pinned-copy bandwidth with no staging memcpy. Registering costs about as much as touching
    every page once, so the agent registers a host-tier model when it lands in shared memory and
    keeps it registered until the model leaves that tier. The mapping is shared, not private:
    page-locking a private writable mapping would break copy-on-write and duplicate every page.
    Other processes may still map the file (the hand-off does, copy-on-write).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("r+b") as handle:
            self._mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_WRITE)
        self.tensor: torch.Tensor | None = torch.frombuffer(self._mapped, dtype=torch.uint8)
        self._cudart: Any = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        self._pointer = self.tensor.data_ptr()
        # cudaHostRegisterDefault (0): page-lock and map for DMA; returns a cudaError code.
        status = self._cudart.cudaHostRegister(self._pointer, self.tensor.numel(), 0)
        if int(status) != 0:
            self.tensor = None
            self._mapped.close()
            raise RuntimeError(f"cudaHostRegister of {path.name} failed: {status}")

    def close(self) -> None:
        """Unregister and unmap (idempotent). No copy from it may be in flight."""
        if self.tensor is None:
            return
        self._cudart.cudaHostUnregister(self._pointer)
        self.tensor = None
        self._mapped.close()


def fill_registered(
    dest: torch.Tensor,
    placements: Sequence[Placement],
    *,
    pool: StagingPool,
    control: LoadControl,
    progress: Callable[[int], None],
    mappings: dict[Path, PinnedMapping] | None = None,
) -> float:
    """Like :func:`fill`, for a CUDA ``dest`` and sources in host shared memory.

    Copies straight from page-locked mappings (``mappings``, or ones made and closed here) in
    ``pool.chunk_bytes`` pieces spread over ``pool.workers`` streams. Returns seconds taken.
    """
    started = time.perf_counter()
    given = mappings or {}
    with pool.lock, torch.cuda.device(dest.device):
        pool.ensure(dest.device)
        streams = [pool.worker(i)[1] for i in range(pool.workers)]
        for placement in placements:
            own = placement.source not in given
            mapping = PinnedMapping(placement.source) if own else given[placement.source]
            host = mapping.tensor
            assert host is not None
            try:
                start = placement.layout.data_start
                chunks = range(0, placement.layout.data_bytes, pool.chunk_bytes)
                for index, offset in enumerate(chunks):
                    control.checkpoint()
                    n = min(pool.chunk_bytes, placement.layout.data_bytes - offset)
                    with torch.cuda.stream(streams[index % len(streams)]):
                        dest[placement.base + offset : placement.base + offset + n].copy_(
                            host[start + offset : start + offset + n], non_blocking=True
                        )
                    progress(n)
            finally:
                # Wait for every copy reading this mapping before anyone may unmap it.
                for stream in streams:
                    stream.synchronize()
                if own:
                    mapping.close()
    return time.perf_counter() - started


def tensor_views(dest: torch.Tensor, placements: Sequence[Placement]) -> dict[str, torch.Tensor]:
    """Zero-copy typed views of every tensor inside ``dest``."""
    views: dict[str, torch.Tensor] = {}
    for placement in placements:
        for entry in placement.layout.tensors:
            start = placement.base + entry.begin
            flat = dest[start : start + entry.nbytes]
            views[entry.name] = flat.view(TORCH_DTYPES[entry.dtype]).view(entry.shape)
    return views
