"""Where the node-local tiers may live, and how the agent marks what it creates there.

Owns two rules. First, a tier's root (``cache_dir``, ``shm_dir``) is a directory of the agent's
own: :func:`check_tier_roots` refuses, at start-up, the file system root, shared directories
(``/tmp``, ``/dev/shm`` itself, ``/var/cache``, ...), top-level directories, the home directory and
its parents, and two tiers sharing one directory. Second, the agent only ever deletes at start-up
what it marked as its own: every directory it makes directly in a tier gets a :data:`MARKER` file
(:func:`make_owned_dir`), and start-up clean-up (:mod:`gpu_agent.diskcache`,
:mod:`gpu_agent.host_tier`) removes only marked entries, so a root that also holds someone
else's files (an operator's mistake, a shared mount) loses nothing that is not the agent's. It
must not decide what a tier holds.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from common.errors import InvalidInput

MARKER = ".prewarm-agent"
"""An empty file in each directory the agent makes in a tier: "created by the prewarm agent"."""

SHARED_ROOTS = frozenset(
    {
        "/dev/shm",
        "/run/shm",
        "/dev/hugepages",
        "/var/tmp",
        "/var/cache",
        "/var/lib",
        "/var/run",
        "/var/log",
        "/run/user",
        "/run/lock",
        "/usr/local",
        "/usr/share",
    }
)
"""Directories other programs share, at depth two or more (every top-level one is refused too)."""


def make_owned_dir(path: Path) -> bool:
    """Create ``path`` (and its parents) if missing and mark it as the agent's; whether it was
    created now. An existing directory is marked too: the agent writes into it from now on."""
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if not marker.exists():
        marker.touch()
    return created


def is_owned(path: Path) -> bool:
    """Whether ``path`` is a directory (not a link) that carries the agent's marker."""
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def only_marker_left(path: Path) -> bool:
    """Whether ``path`` is an owned directory that holds nothing but its marker."""
    try:
        return is_owned(path) and [entry.name for entry in path.iterdir()] == [MARKER]
    except OSError:
        return False


def remove_if_only_marker(path: Path) -> None:
    """Remove an owned directory that holds nothing but its marker; otherwise leave it."""
    if only_marker_left(path):
        with contextlib.suppress(OSError):
            (path / MARKER).unlink()
            path.rmdir()


def _refusal(setting: str, value: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"agent.{setting} is {value!r}, {why}; the agent removes what it left behind there at "
        f"start-up, so give it a directory of its own, e.g. "
        f"{'/dev/shm/prewarm' if setting == 'shm_dir' else '/var/cache/prewarm'}"
    )


def check_tier_root(setting: str, value: str, *, home: Path) -> Path:
    """``value`` as an absolute path if it may be a tier's root; :class:`InvalidInput` if not.

    Refused: an empty path, the file system root, any top-level directory, a shared directory
    (:data:`SHARED_ROOTS`), the home directory and its parents; checked both as written and with
    links resolved (``/dev/shm`` may be a link to ``/run/shm``).
    """
    if not value:
        raise _refusal(setting, value, "empty")
    given = Path(os.path.abspath(value))
    resolved = given.resolve()
    # No home at all (HOME unset, no passwd entry) leaves "~" unexpanded: nothing to protect.
    homes = {home, home.resolve()} if home.is_absolute() else set()
    for path in (given, resolved):
        if path == Path(path.anchor):
            raise _refusal(setting, value, "the file system root")
        if len(path.parts) < 3:
            raise _refusal(setting, value, f"a top-level directory ({path})")
        if str(path) in SHARED_ROOTS:
            raise _refusal(setting, value, f"a directory other programs share ({path})")
        for each in homes:
            if path == each or path in each.parents:
                raise _refusal(setting, value, f"the home directory or one of its parents ({path})")
    return resolved


def check_tier_roots(cache_dir: str, shm_dir: str, *, home: Path) -> tuple[Path, Path]:
    """Both roots checked (:func:`check_tier_root`), and neither inside the other (the tiers lay
    out ``models/`` alike and would take each other's entries for their own)."""
    cache = check_tier_root("cache_dir", cache_dir, home=home)
    shm = check_tier_root("shm_dir", shm_dir, home=home)
    if cache == shm or cache.is_relative_to(shm) or shm.is_relative_to(cache):
        raise InvalidInput(
            f"agent.cache_dir ({cache_dir}) and agent.shm_dir ({shm_dir}) overlap; give each tier "
            "a directory of its own"
        )
    return cache, shm
