"""Copying one verified disk-tier file into host shared memory, at the speed the disk allows.

Owns the byte move disk -> host tier: the destination is written as ``<dest>.partial`` and renamed
only once every byte is in place, so no process (and no restarted agent, whose host tier is
emptied of the agent's entries at start-up) ever sees a file that looks complete but is not; a
failure, cancellation or SIGKILL part-way leaves at most the ``.partial``. It must not choose
what to copy or where (:mod:`gpu_agent.host_tier` does) and does not hash.

Integrity: a disk-tier file was hashed and checked against its sha256 when it was fetched
(:class:`gpu_agent.sources.Fetcher`, before its rename out of ``.partial``), and the agent never
writes to it afterwards; this copy moves those exact bytes and checks the length at both ends
(a source that ends early is :class:`DataLoss`). Re-hashing here would bound the copy by
sha256 (0.5 GB/s measured on the development machine, about 2 GB/s per core at best), and a
whole-file sha256 cannot be split over threads.

How the bytes move, and why (measured on Linux 6.18, tmpfs with 4 KiB pages, ext4 source; the
figures are in ``benchmarks/gpu_agent.py``):
- ``sendfile`` file to file (Linux >= 2.6.33) splices page-cache pages straight into the
  destination's write path: one memcpy, no userspace buffer. Reads and writes through a buffer
  copy twice; ``preadv`` into an mmap of the shm file takes a fault per 4 KiB page, each page
  zeroed and then overwritten, and measured slower than sendfile even after
  ``MADV_POPULATE_WRITE``. ``copy_file_range`` is refused across file systems (EXDEV, >= 5.19).
- With a warm page cache the ceiling is tmpfs itself: allocating and writing fresh shmem pages
  from a cache-hot buffer, with no read at all, runs at 40-60 % of a warm sequential read, and
  sendfile gets close to it. Writes to one tmpfs file serialise on its inode lock, so several
  writer threads measured no faster (four were slower: they spin on the lock). Allocating the
  destination first (``posix_fallocate``) measured no faster either.
- Page faults into a shared mapping of the destination take no inode lock and do run in
  parallel (CPU per GB flat from 1 to 4 threads), but each byte costs about 20 % more CPU than in
  the sendfile stream (every 4 KiB page is zero-filled on its fault, and a fault that finds tmpfs
  full is SIGBUS, not ENOSPC, unless the file was fallocated). On a 2-core machine that lost.
  Whether it wins with several idle cores is unmeasured: ``--disk-host-variants``.
- With a cold page cache the disk is the bound, and what matters is reads in flight:
  ``POSIX_FADV_SEQUENTIAL`` widens readahead, and ``POSIX_FADV_WILLNEED`` keeps the next
  :data:`PREFETCH_BLOCKS` blocks' reads queued while the current block is written, so the disk
  and the memcpy overlap.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from common.errors import DataLoss
from gpu_agent.control import LoadControl
from gpu_agent.sources import PARTIAL_SUFFIX

HOST_COPY_BLOCK_BYTES = 32 * 1024**2
"""Cancellation and deadlines are checked between blocks; each sendfile call moves at most
:data:`_SENDFILE_BYTES` of one."""
PREFETCH_BLOCKS = 2
"""Blocks whose reads are queued ahead of the one being copied."""
_SENDFILE_BYTES = 8 * 1024**2
_FALLBACK_BUFFER_BYTES = 1024**2
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
"""sendfile refused for this pair of files (no splice support): copy through a buffer instead."""

Progress = Callable[[int], None]
"""Called with the number of bytes just copied."""


def copy_into_host(
    src: Path,
    dest: Path,
    *,
    control: LoadControl,
    progress: Progress,
    block_bytes: int = HOST_COPY_BLOCK_BYTES,
) -> int:
    """Copy ``src`` to ``dest`` through ``<dest>.partial`` and a rename; return the bytes copied.

    ``dest`` appears complete or not at all: on any error (``control``'s cancellation or deadline,
    :class:`DataLoss` when ``src`` ends early or changes size under the copy, an ``OSError`` such as
    ENOSPC) the ``.partial`` is removed and the error raised (a ``dest`` already there stays as
    it was); on success a ``dest`` already there is replaced.
    """
    if block_bytes < 1:
        raise ValueError("block_bytes must be positive")
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    try:
        reader = os.open(src, os.O_RDONLY)
        try:
            size = os.fstat(reader).st_size
            # Sequential access doubles the file's readahead window.
            os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            writer = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                _copy_blocks(reader, writer, size, control=control, progress=progress,
                             block_bytes=block_bytes)  # fmt: skip
            finally:
                os.close(writer)
            if os.fstat(reader).st_size != size:
                raise DataLoss(f"{src} changed size while it was copied into host memory")
        finally:
            os.close(reader)
        os.replace(partial, dest)
        return size
    finally:
        partial.unlink(missing_ok=True)


def _copy_blocks(
    reader: int,
    writer: int,
    size: int,
    *,
    control: LoadControl,
    progress: Progress,
    block_bytes: int,
) -> None:
    """Copy ``size`` bytes from ``reader`` to ``writer`` (at its start) block by block."""
    # Queue the first blocks' reads at once; each block then queues the one PREFETCH_BLOCKS
    # ahead (async readahead), so the disk works while this block is written.
    os.posix_fadvise(reader, 0, (PREFETCH_BLOCKS + 1) * block_bytes, os.POSIX_FADV_WILLNEED)
    for offset in range(0, size, block_bytes):
        control.checkpoint()
        if offset:
            ahead = offset + PREFETCH_BLOCKS * block_bytes
            os.posix_fadvise(reader, ahead, block_bytes, os.POSIX_FADV_WILLNEED)
        _copy_range(reader, writer, offset, min(block_bytes, size - offset), progress=progress)


def _copy_range(reader: int, writer: int, offset: int, nbytes: int, *, progress: Progress) -> None:
    """Copy ``reader[offset:offset+nbytes]`` to the same place in ``writer``."""
    done = 0
    # sendfile writes at the writer's file position (it has no output offset), which the
    # buffered fallback (pwrite) does not move: position it at each block.
    os.lseek(writer, offset, os.SEEK_SET)
    try:
        while done < nbytes:
            sent = os.sendfile(writer, reader, offset + done, min(_SENDFILE_BYTES, nbytes - done))
            if sent == 0:
                raise _short(nbytes - done)
            done += sent
            progress(sent)
    except OSError as error:
        if error.errno not in _NO_SENDFILE:
            raise
        _copy_range_buffered(reader, writer, offset + done, nbytes - done, progress=progress)


def _copy_range_buffered(
    reader: int, writer: int, offset: int, nbytes: int, *, progress: Progress
) -> None:
    """The same through a userspace buffer, where sendfile is refused."""
    buffer = memoryview(bytearray(min(_FALLBACK_BUFFER_BYTES, nbytes)))
    done = 0
    while done < nbytes:
        want = min(len(buffer), nbytes - done)
        got = os.preadv(reader, [buffer[:want]], offset + done)
        if got == 0:
            raise _short(nbytes - done)
        written = 0
        while written < got:
            written += os.pwritev(writer, [buffer[written:got]], offset + done + written)
        done += got
        progress(got)


def _short(missing: int) -> DataLoss:
    return DataLoss(
        f"a disk-tier file ended {missing} bytes early while it was copied into host memory "
        "(truncated?)"
    )
