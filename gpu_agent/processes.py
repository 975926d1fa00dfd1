"""Which client processes the agent can watch, so that their leases end when they exit.

Owns :class:`ProcessTable`: a lease taken by a process in the agent's own PID namespace (the
same pod with ``shareProcessNamespace``, or both on the host PID namespace) is bound to that
process, identified by its pid *and* its start time, so a recycled pid is not mistaken for the
original holder. A pid from another namespace means nothing here (pid 1 of a pod is not this
agent's pid 1): such a lease can only end by Release or its TTL. It reads ``/proc`` and
nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A process as the agent sees it: its pid and its start time (clock ticks after boot)."""

    pid: int
    start_ticks: int


def own_pid_namespace(proc: Path = PROC) -> str:
    """This process's PID namespace (``pid:[4026531836]``), or ``""`` where ``/proc`` has none."""
    try:
        return os.readlink(proc / "self" / "ns" / "pid")
    except OSError:
        return ""


class ProcessTable:
    """Looks processes up in ``proc`` (``/proc``; tests may point it at another procfs)."""

    def __init__(self, proc: Path = PROC) -> None:
        self._proc = proc
        self.namespace = own_pid_namespace(proc)
        """The agent's PID namespace; ``""`` when it cannot be read (then nothing is watched)."""

    def watchable(self, pid: int, namespace: str) -> bool:
        """Whether ``pid`` (as numbered in ``namespace``) names a process this agent can see."""
        return pid > 0 and bool(namespace) and namespace == self.namespace

    def find(self, pid: int) -> ProcessRef | None:
        """The running process ``pid`` of the agent's namespace, or ``None`` if there is none."""
        start = self._start_ticks(pid)
        return None if start is None else ProcessRef(pid, start)

    def alive(self, ref: ProcessRef) -> bool:
        """Whether ``ref``'s process still runs (same pid, same start time, not a zombie)."""
        return self._start_ticks(ref.pid) == ref.start_ticks

    def _start_ticks(self, pid: int) -> int | None:
        try:
            stat = (self._proc / str(pid) / "stat").read_text()
        except (OSError, ValueError):
            return None
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the
        # last ")". Fields from there: state is field 3, starttime field 22 (proc(5)).
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 20 or fields[0] in ("Z", "X"):
            return None
        try:
            return int(fields[19])
        except ValueError:
            return None
