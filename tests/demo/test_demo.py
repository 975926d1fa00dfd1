"""``prewarm demo`` end to end (short): a real agent process, the daemon loop, the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PREWARM = [sys.executable, "-m", "prewarm"]


def test_short_demo_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [
            *PREWARM,
            "demo",
            "--minutes",
            "20",
            "--models",
            "4",
            "--no-live",
            "--no-baselines",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["live_minutes"] == 20
    assert len(report["models"]) == 4
    assert report["agent_loads_ok"] > 0  # the real agent process answered preloads
    assert report["agent_errors"] == 0
    assert 0.0 <= report["live_cold_start_ratio"] <= 1.0
    assert (out / "report.png").stat().st_size > 10_000
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "prewarm demo on builtin:azure-functions-2019-100fn" in (out / "report.txt").read_text()


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    for args in (["--models", "0"], ["--minutes", "5"], ["--trace", "builtin:nope"]):
        done = subprocess.run(
            [*PREWARM, "demo", *args, "--no-live", "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("prewarm: error:")
        assert not (tmp_path / "x").exists()
