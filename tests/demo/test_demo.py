"""``prewarm demo`` end to end: real agent processes, the daemon's cycle, the spike timelines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PREWARM = [sys.executable, "-m", "prewarm"]


def test_demo_shows_spikes_met_by_preloaded_weights(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [
            *PREWARM, "demo", "--spikes", "3", "--no-live", "--no-baselines", "--out", str(out),
            "--json", "-",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    # --json -: stdout is the report's JSON alone; the text report went to stderr.
    assert json.loads(done.stdout) == report
    assert "Preload issued" in done.stderr
    # Each model the quality gate sent back to reactive is named, with the reason.
    for fallback in report["fallbacks"]:
        assert f"demo:   {fallback['model']} at " in done.stderr
        assert fallback["reason"] in done.stderr
    assert report["agent_actions"]["preloads_ok"] > 0  # real agent processes answered
    assert report["agent_actions"]["errors"] == 0
    timelines = report["timelines"]
    assert len(timelines) == 3
    met = [t for t in timelines if t["weights_resident_s"] is not None]
    assert met, timelines  # at least one spike had its weights resident before it
    for line in met:
        assert line["preload_issued_s"] <= line["weights_resident_s"] < line["spike_onset_s"]
        assert line["agent_load_s"] > 0
        assert line["preload_node"].endswith("-node-0")  # a real node name, not a pool
        assert line["reactive_start_s"] > line["prewarm_wait_s"]
        assert line["saved_s"] == line["reactive_start_s"] - line["prewarm_wait_s"]
    assert (out / "report.png").stat().st_size > 10_000
    assert "data:image/png;base64," in (out / "report.html").read_text()
    text = (out / "report.txt").read_text()
    assert "prewarm demo on builtin:servegen-spiky-14d" in text
    assert "Preload issued" in text
    assert "weights resident" in text


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("timestamp,model,requests\n2026-01-01T00:00:00Z,a,1\n")
    for args in (["--spikes", "0"], ["--trace", "builtin:nope"], ["--trace", str(short)]):
        done = subprocess.run(
            [*PREWARM, "demo", *args, "--no-live", "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("prewarm: error:")
        assert not (tmp_path / "x").exists()
