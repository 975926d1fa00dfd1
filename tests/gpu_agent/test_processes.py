"""The process table the agent binds leases to: pid plus start time, read from a procfs."""

from __future__ import annotations

import os
from pathlib import Path

from gpu_agent.processes import ProcessTable, own_pid_namespace


def _stat(pid: int, *, comm: str, state: str, start: int) -> str:
    # proc(5): pid (comm) state, then 18 more fields before starttime (field 22).
    rest = " ".join(["0"] * 18)
    return f"{pid} ({comm}) {state} {rest} {start} 0 0\n"


def _procfs(root: Path, pid: int, text: str) -> None:
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "stat").write_text(text)


def test_a_recycled_pid_is_not_the_original_holder(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    _procfs(tmp_path, 42, _stat(42, comm="python (serving) x", state="S", start=1234))
    original = table.find(42)
    assert original is not None
    assert original.start_ticks == 1234
    assert table.alive(original)

    _procfs(tmp_path, 42, _stat(42, comm="other", state="R", start=9999))
    assert not table.alive(original)


def test_zombies_missing_and_garbled_entries_are_not_running(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    _procfs(tmp_path, 7, _stat(7, comm="gone", state="Z", start=5))
    _procfs(tmp_path, 8, "8 (cut")
    assert table.find(7) is None
    assert table.find(8) is None
    assert table.find(9) is None


def test_only_pids_of_the_agents_own_namespace_are_watched() -> None:
    table = ProcessTable()
    namespace = own_pid_namespace()
    assert namespace.startswith("pid:[")
    assert table.watchable(os.getpid(), namespace)
    assert not table.watchable(os.getpid(), "pid:[1]")
    assert not table.watchable(os.getpid(), "")
    assert not table.watchable(0, namespace)
    me = table.find(os.getpid())
    assert me is not None
    assert table.alive(me)
