"""The state directory of ``prewarm up``: one run's settings, tokens, data and logs.

Owns: preparing the directory (only one that is empty, missing, or made by an earlier ``prewarm
up``; the earlier run's data removed), a lock so that two runs cannot share it, and writing
secrets readable by this user only. Must not: remove a directory it did not make.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from common.errors import InvalidInput

MARKER = ".prewarm-up"
"""Marks a directory as a ``prewarm up`` state directory (only such a directory is cleaned)."""
RUN_PARTS = ("prometheus", "cluster", "agents", "models", "logs")
"""The parts of a run, removed when the next run starts."""


@contextlib.contextmanager
def state_directory(path: Path) -> Iterator[Path]:
    """``path`` prepared for one run and locked while it lasts.

    A missing or empty directory, or one an earlier ``prewarm up`` made, is used (the earlier
    run's data is removed); anything else is refused, as is one another ``prewarm up`` holds.
    """
    path = path.expanduser()
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        raise InvalidInput(
            f"--dir {path} is not empty and was not made by prewarm up; choose another directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("prewarm up state directory\n", encoding="utf-8")
    lock = (path / "up.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise InvalidInput(
            f"another prewarm up is running on {path}; stop it, or use another --dir"
        ) from None
    try:
        for part in RUN_PARTS:
            shutil.rmtree(path / part, ignore_errors=True)
        for name in ("stack.json", "control-token", "agent-token"):
            (path / name).unlink(missing_ok=True)
        (path / "logs").mkdir()
        yield path
    finally:
        (path / "stack.json").unlink(missing_ok=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def write_secret(path: Path) -> Path:
    """A fresh random token in ``path``, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secrets.token_urlsafe(32))
    return path
