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
sha256's ~0.5-2 GB/s per core, and a whole-file sha256 cannot be split over threads.

How the bytes move, and why (measured on Linux 6.18, tmpfs with 4 KiB pages, ext4 source):
- ``sendfile`` file to file (Linux >= 2.6.33) splices page-cache pages straight into the
  destination's write path: one memcpy, no userspace buffer. Python reads and writes copy twice;
  ``preadv`` into an mmap of the shm file takes a page fault per 4 KiB page (the page is zeroed
  first, then overwritten), which measured slower than sendfile even with
  ``MADV_POPULATE_WRITE``. ``copy_file_range`` is refused across file systems (EXDEV) since 5.19.
- The ceiling with a warm page cache is tmpfs itself: allocating and writing fresh shmem pages
  runs at about 60 % of a warm sequential read even from a cache-hot buffer with no read at all;
  ``benchmarks/gpu_agent.py`` measures it in the same run.
- Several blocks are in flight (``workers`` threads, each with its own descriptor of the
  destination; the GIL is released in the syscall). tmpfs writes serialise on the inode lock,
  but the reads do not: with a cold page cache each worker's block is its own read stream, and
  ``POSIX_FADV_WILLNEED`` on a block queues its whole read at once instead of waiting for the
  readahead window to grow.
- ``ftruncate`` gives the destination its final size first, so blocks land in any order.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

from common.errors import DataLoss
from gpu_agent.control import LoadControl
from gpu_agent.sources import PARTIAL_SUFFIX

HOST_COPY_WORKERS = 4
HOST_COPY_BLOCK_BYTES = 32 * 1024**2
"""One worker's unit of work. Cancellation and deadlines are checked between blocks, and each
sendfile call moves at most :data:`_SENDFILE_BYTES` of it."""
_SENDFILE_BYTES = 8 * 1024**2
_FALLBACK_BUFFER_BYTES = 1024**2
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
"""sendfile refused for this pair of files (no splice support): copy through a buffer instead."""

Progress = Callable[[int], None]
"""Called, from worker threads, with the number of bytes just copied."""


def copy_into_host(
    src: Path,
    dest: Path,
    *,
    control: LoadControl,
    progress: Progress,
    workers: int = HOST_COPY_WORKERS,
    block_bytes: int = HOST_COPY_BLOCK_BYTES,
) -> int:
    """Copy ``src`` to ``dest`` through ``<dest>.partial`` and a rename; return the bytes copied.

    ``dest`` appears complete or not at all: on any error (``control``'s cancellation or deadline,
    :class:`DataLoss` when ``src`` is shorter than it was when opened, an ``OSError`` such as
    ENOSPC) the ``.partial`` is removed and the error raised. ``progress`` may be called from
    several threads at once. A ``dest`` already there is replaced.
    """
    if workers < 1 or block_bytes < 1:
        raise ValueError("workers and block_bytes must be positive")
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    try:
        reader = os.open(src, os.O_RDONLY)
        try:
            size = os.fstat(reader).st_size
            # Sequential access doubles the readahead window on each block's stream.
            os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            writer = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                os.ftruncate(writer, size)
            finally:
                os.close(writer)
            _copy_blocks(reader, partial, size, control=control, progress=progress,
                         workers=workers, block_bytes=block_bytes)  # fmt: skip
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
    partial: Path,
    size: int,
    *,
    control: LoadControl,
    progress: Progress,
    workers: int,
    block_bytes: int,
) -> None:
    """Copy ``size`` bytes from ``reader`` to the same offsets of ``partial`` on ``workers``
    threads; the first error stops the others (at their next block) and is raised."""
    offsets = iter(range(0, size, block_bytes))
    take_lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def take() -> int | None:
        with take_lock:
            offset = next(offsets, None)
        return None if offset is None or stop.is_set() else offset

    def work() -> None:
        try:
            writer = os.open(partial, os.O_WRONLY)
        except BaseException as error:  # noqa: BLE001 - re-raised by the caller's thread
            errors.append(error)
            stop.set()
            return
        try:
            while (offset := take()) is not None:
                control.checkpoint()
                nbytes = min(block_bytes, size - offset)
                os.posix_fadvise(reader, offset, nbytes, os.POSIX_FADV_WILLNEED)
                _copy_range(reader, writer, offset, nbytes, progress=progress)
        except BaseException as error:  # noqa: BLE001 - re-raised by the caller's thread
            errors.append(error)
            stop.set()
        finally:
            os.close(writer)

    if size == 0:
        return
    count = min(workers, -(-size // block_bytes))
    if count == 1:
        work()
    else:
        threads = [
            threading.Thread(target=work, name=f"host-copy-{i}", daemon=True) for i in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


def _copy_range(reader: int, writer: int, offset: int, nbytes: int, *, progress: Progress) -> None:
    """Copy ``reader[offset:offset+nbytes]`` to the same place in ``writer``."""
    done = 0
    # sendfile writes at the writer's file position (it has no output offset): each worker owns
    # its descriptor, so positioning it here is race-free.
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
