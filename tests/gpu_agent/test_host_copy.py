"""The disk -> host-tier copy: exact bytes at any size, short and refused sendfile, failures and
SIGKILL part-way leave nothing that looks complete (only a ``.partial``, which start-up removes)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.errors import DataLoss
from gpu_agent import host_copy
from gpu_agent.control import LoadCancelled, LoadControl
from gpu_agent.host_copy import copy_into_host
from gpu_agent.host_tier import HostTier
from gpu_agent.tier_roots import make_owned_dir

BLOCK = 10_000
"""Not a multiple of the page size: blocks start at unaligned offsets."""


def _source(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "disk" / f"src-{size}.bin"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def _copy(src: Path, dest: Path, **kwargs: Any) -> tuple[int, list[int]]:
    reported: list[int] = []
    kwargs.setdefault("control", LoadControl())
    copied = copy_into_host(src, dest, progress=reported.append, block_bytes=BLOCK, **kwargs)
    return copied, reported


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 7 * BLOCK + 123])
def test_copies_exact_bytes(tmp_path: Path, size: int) -> None:
    src = _source(tmp_path, size)
    dest = tmp_path / "shm" / "model.safetensors"
    dest.parent.mkdir()
    copied, reported = _copy(src, dest)
    assert copied == size
    assert sum(reported) == size
    assert dest.read_bytes() == src.read_bytes()
    assert _leftovers(dest.parent) == ["model.safetensors"]


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    src = _source(tmp_path, 3 * BLOCK)
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"old" * 50_000)
    _copy(src, dest)
    assert dest.read_bytes() == src.read_bytes()


Sendfile = Callable[[int, int, int, int], int]


def _patch_sendfile(
    monkeypatch: pytest.MonkeyPatch, wrapper: Callable[[Sendfile, int, int, int, int], int]
) -> None:
    real = os.sendfile

    def patched(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        return wrapper(real, out_fd, in_fd, offset, count)

    monkeypatch.setattr(host_copy.os, "sendfile", patched)


def test_short_sendfiles_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_sendfile(monkeypatch, lambda real, o, i, off, n: real(o, i, off, min(n, 777)))
    src = _source(tmp_path, 5 * BLOCK + 5)
    dest = tmp_path / "model.safetensors"
    copied, reported = _copy(src, dest)
    assert (copied, sum(reported)) == (src.stat().st_size, src.stat().st_size)
    assert dest.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("after_bytes", [0, 3000])
def test_refused_sendfile_falls_back_to_reads_and_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_bytes: int
) -> None:
    """sendfile refused at once, or after moving part of a block: the rest goes through a buffer
    and lands at the right offsets."""
    sent_per_block: dict[int, int] = {}

    def refuse(real: Callable[..., int], out_fd: int, in_fd: int, offset: int, n: int) -> int:
        block = offset // BLOCK
        if sent_per_block.get(block, 0) >= after_bytes:
            raise OSError(errno.EINVAL, "no splice here")
        sent = real(out_fd, in_fd, offset, min(n, after_bytes - sent_per_block.get(block, 0)))
        sent_per_block[block] = sent_per_block.get(block, 0) + sent
        return sent

    _patch_sendfile(monkeypatch, refuse)
    src = _source(tmp_path, 4 * BLOCK + 17)
    dest = tmp_path / "model.safetensors"
    copied, reported = _copy(src, dest)
    assert sum(reported) == copied == src.stat().st_size
    assert dest.read_bytes() == src.read_bytes()


def test_short_reads_and_writes_of_the_fallback_are_continued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "no sendfile")

    real_preadv, real_pwritev = os.preadv, os.pwritev

    def short_read(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real_preadv(fd, [buffers[0][:777]], offset)

    def short_write(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real_pwritev(fd, [buffers[0][:500]], offset)

    monkeypatch.setattr(host_copy.os, "sendfile", refuse)
    monkeypatch.setattr(host_copy.os, "preadv", short_read)
    monkeypatch.setattr(host_copy.os, "pwritev", short_write)
    src = _source(tmp_path, 2 * BLOCK + 99)
    dest = tmp_path / "model.safetensors"
    copied, reported = _copy(src, dest)
    assert sum(reported) == copied == src.stat().st_size
    assert dest.read_bytes() == src.read_bytes()


def test_a_source_that_ends_early_is_data_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source shrank under the copy (sendfile reaches its end early): nothing is left."""
    _patch_sendfile(
        monkeypatch, lambda real, o, i, off, n: 0 if off >= 2 * BLOCK else real(o, i, off, n)
    )
    src = _source(tmp_path, 4 * BLOCK)
    dest = tmp_path / "shm" / "model.safetensors"
    dest.parent.mkdir()
    with pytest.raises(DataLoss, match=r"ended \d+ bytes early"):
        _copy(src, dest)
    assert _leftovers(dest.parent) == []


def test_buffered_fallback_also_detects_an_early_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> int:
        raise OSError(errno.ENOSYS, "no sendfile")

    real_preadv = os.preadv
    monkeypatch.setattr(host_copy.os, "sendfile", refuse)
    monkeypatch.setattr(
        host_copy.os,
        "preadv",
        lambda fd, buffers, offset: 0 if offset >= BLOCK else real_preadv(fd, buffers, offset),
    )
    src = _source(tmp_path, 3 * BLOCK)
    dest = tmp_path / "shm" / "model.safetensors"
    dest.parent.mkdir()
    with pytest.raises(DataLoss):
        _copy(src, dest)
    assert _leftovers(dest.parent) == []


def test_write_failure_midway_leaves_nothing_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(real: Callable[..., int], out_fd: int, in_fd: int, offset: int, n: int) -> int:
        if offset >= 3 * BLOCK:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(out_fd, in_fd, offset, n)

    _patch_sendfile(monkeypatch, full)
    src = _source(tmp_path, 6 * BLOCK)
    dest = tmp_path / "shm" / "model.safetensors"
    dest.parent.mkdir()
    dest.write_bytes(b"previous")
    with pytest.raises(OSError) as raised:
        _copy(src, dest)
    assert raised.value.errno == errno.ENOSPC
    assert _leftovers(dest.parent) == ["model.safetensors"]
    assert dest.read_bytes() == b"previous"


def test_cancelled_midway_leaves_nothing(tmp_path: Path) -> None:
    src = _source(tmp_path, 8 * BLOCK)
    dest = tmp_path / "shm" / "model.safetensors"
    dest.parent.mkdir()
    control = LoadControl()
    with pytest.raises(LoadCancelled):
        copy_into_host(src, dest, control=control, progress=lambda _n: control.cancel("evicted"),
                       block_bytes=BLOCK)  # fmt: skip
    assert _leftovers(dest.parent) == []


KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from gpu_agent.control import LoadControl
    from gpu_agent.host_copy import copy_into_host

    def slow(_n):
        print("copying", flush=True)
        time.sleep(0.2)

    copy_into_host(Path(sys.argv[2]), Path(sys.argv[3]), control=LoadControl(), progress=slow,
                   block_bytes=4096)
    """
)


def test_sigkill_midway_leaves_only_a_partial_that_start_up_removes(
    tmp_path: Path, repo_root: Path
) -> None:
    """A killed agent never leaves a host-tier file that looks complete: what it was writing is
    ``<name>.partial`` in a directory it marked as its own, and the next agent's start-up
    (:meth:`HostTier.reset`) removes it."""
    src = _source(tmp_path, 64 * 4096)
    tier = HostTier(tmp_path / "shm", headroom_bytes=0, host_fill="staged")
    tier.reset()
    directory = tier.root / "model@rev"
    make_owned_dir(directory)
    dest = directory / "model.safetensors"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(repo_root), str(src), str(dest)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "copying"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    assert not dest.exists()
    assert (directory / "model.safetensors.partial").exists()
    tier.reset()
    assert not directory.exists()
