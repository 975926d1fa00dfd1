"""Child processes of the local stack: start with a log file, stop for sure, free ports.

Owns: one child process (its argv, its log, SIGTERM then SIGKILL) and picking a free loopback port.
Must not: leave a child behind: every child runs in its own session so that a stuck one is killed
with its whole group, and :meth:`ChildProcess.stop` waits until it is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ChildProcess:
    """A child process writing stdout and stderr to ``log`` (appended, so a restart keeps the
    first run's lines). ``env`` replaces the environment when given."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (non-blocking)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as handle:
            # A new session: the child (and anything it starts) gets no terminal signals of ours
            # (a Ctrl-C reaches only `prewarm up`, which then stops its children in order), and
            # a stuck one can be killed with its whole group.
            self.popen = subprocess.Popen(
                self.argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(self.env) if self.env is not None else None,
            )

    @property
    def pid(self) -> int | None:
        """The process id while started."""
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        """Whether it was started and has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout_s: float = 15.0, *, kill: bool = False) -> None:
        """SIGTERM (SIGKILL with ``kill``), wait up to ``timeout_s``, then SIGKILL its group."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                # It may have exited between the timeout and the kill.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout_s)
        self.popen = None

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of its log ("" when unreadable)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
