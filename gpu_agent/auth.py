"""The bearer token the agent expects (``agent.auth.token`` or ``agent.auth.token_file``).

Owns reading the token, refusing to start without one in ``token`` mode, and following a rotated
Secret: a ``token_file`` is re-read whenever the file it names changes (Kubernetes swaps a Secret
volume's files by renaming a new directory into place, so the resolved file's inode changes). It
must not check requests (:mod:`gpu_agent.server` does, in constant time).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from common.addresses import is_loopback, on_loopback
from common.errors import InvalidInput
from gpu_agent.config import AgentConfig, AuthConfig

log = logging.getLogger(__name__)


def checked_listen(config: AgentConfig) -> str:
    """Where the agent may listen: ``agent.listen``, except that with ``auth.mode=none`` (no
    credentials: anyone who reaches the port may preload, evict and attach) only a loopback
    address is allowed. Left at its default (all interfaces), it becomes 127.0.0.1 with the same
    port; set to another address, it is :class:`InvalidInput` (a start-up error) naming the fix."""
    if config.auth.mode != "none" or is_loopback(config.listen):
        return config.listen
    if "listen" not in config.model_fields_set:
        return on_loopback(config.listen)
    raise InvalidInput(
        f"agent.auth.mode=none serves the agent without credentials, so it listens on loopback "
        f"only, and agent.listen is {config.listen}: set agent.listen to 127.0.0.1:<port> (or "
        "leave it unset), or use agent.auth.mode=token with agent.auth.token_file"
    )


def _read(path: Path) -> str:
    """The token in ``path``, stripped; :class:`InvalidInput` if unreadable or empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(f"cannot read agent.auth.token_file {path}: {error}") from error
    if not token:
        raise InvalidInput(f"agent.auth.token_file {path} is empty; write the token into it")
    return token


class BearerToken:
    """What callers must present as ``authorization: Bearer <token>``."""

    def __init__(self, *, token: str | None = None, path: Path | None = None) -> None:
        if (token is None) == (path is None):
            raise ValueError("give a token or a token file")
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._expected = b""
        if token is not None:
            self._expected = f"Bearer {token}".encode()
        else:
            try:
                self._refresh()
            except OSError as error:
                raise InvalidInput(f"cannot read agent.auth.token_file {path}: {error}") from error

    @classmethod
    def from_config(cls, auth: AuthConfig) -> BearerToken:
        """The token of a ``token``-mode config; :class:`InvalidInput` (a start-up error) when
        neither ``token`` nor ``token_file`` gives one, or the file cannot be read or is empty."""
        if auth.token is not None and auth.token.get_secret_value().strip():
            return cls(token=auth.token.get_secret_value().strip())
        if auth.token_file:
            return cls(path=Path(auth.token_file))
        raise InvalidInput(
            "agent.auth.mode is token (the default) but no token is configured: set "
            "agent.auth.token_file to a mounted Secret's file (or agent.auth.token, "
            "PREWARM_AGENT__AUTH__TOKEN), or choose agent.auth.mode=mtls; mode=none leaves the "
            "agent open to anyone who reaches its port"
        )

    def _refresh(self) -> None:
        assert self._path is not None
        stat = os.stat(self._path)
        stamp = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._expected = f"Bearer {_read(self._path)}".encode()
            self._stamp = stamp

    def expected(self) -> bytes:
        """``b"Bearer <token>"`` now. A token file that changed is read again; if it cannot be
        read (mid-rotation, or removed), the last token read stays in force and a warning says
        so."""
        if self._path is None:
            return self._expected
        with self._lock:
            try:
                self._refresh()
            except (OSError, InvalidInput) as error:
                log.warning(
                    "agent token file unreadable; keeping the last token read",
                    extra={"path": str(self._path), "error": str(error)},
                )
            return self._expected
