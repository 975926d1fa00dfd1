"""``prewarm bench`` through the real entry point (a subprocess), so exit codes are the CLI's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIELDS = {
    "cold_start_ratio",
    "cold_start_p75_per_model",
    "wait_p50_s",
    "wait_p99_s",
    "cold_wait_p99_s",
    "queue_wait_p99_s",
    "idle_gpu_gb_hours",
    "gpu_node_hours",
}


def _trace(tmp_path: Path) -> Path:
    lines = ["timestamp,model,requests"]
    for minute in range(0, 180, 3):
        lines.append(f"{minute * 60},a,2")
        if minute % 30 == 0:
            lines.append(f"{minute * 60},b,1")
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prewarm", "bench", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_json_document_has_the_documented_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    result = _bench(
        "--trace",
        str(_trace(tmp_path)),
        "--policies",
        "keepalive-10m,oracle",
        "--json",
        str(out),
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    # stderr is a pipe here: progress comes as plain lines, one per policy when it is done.
    assert "bench: keepalive-10m done (" in result.stderr
    assert "bench: oracle done (" in result.stderr
    document = json.loads(out.read_text())
    assert set(document) == {
        "trace",
        "requests",
        "models",
        "gpu_memory_budget_gb",
        "policies",
        "serving_objective",
    }
    assert document["serving_objective"]["met"] is True
    assert document["requests"] == 60 * 2 + 6
    assert document["models"] == 2
    assert list(document["policies"]) == ["keepalive-10m", "oracle"]
    for summary in document["policies"].values():
        assert set(summary) == FIELDS
    assert plot.stat().st_size > 1000


def test_sweep_gives_curves_and_the_verdict_at_matched_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _bench(
        "--trace",
        str(_trace(tmp_path)),
        "--policies",
        "keepalive-10m,tyche,prewarm",
        "--sweep",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert [len(document["sweep"][name]) for name in ("keepalive-10m", "tyche", "prewarm")] == [
        5,
        5,
        5,
    ]
    point = document["sweep"]["keepalive-10m"][0]
    assert set(point) == {
        "setting",
        "params",
        "cold_start_ratio",
        "idle_gpu_gb_hours",
        "wait_p99_s",
        "cold_wait_p99_s",
        "queue_wait_p99_s",
    }
    assert point["params"] == {"keep_s": 300.0}
    matched = document["matched_memory"]
    assert list(matched) == ["keepalive-10m", "tyche"]
    for verdict in matched.values():
        assert verdict["verdict"] in {"meets", "misses", "tie", "beyond the curve"}
        assert verdict["idle_gpu_gb_hours"] == document["policies"]["prewarm"]["idle_gpu_gb_hours"]
    # The table and the verdict lines, without --json.
    shown = _bench(
        "--trace", str(_trace(tmp_path)), "--policies", "keepalive-10m,prewarm", "--sweep"
    )
    assert shown.returncode == 0, shown.stderr
    assert "prewarm vs keepalive-10m at " in shown.stdout
    assert "keep 60 min" in shown.stdout


def test_json_to_stdout_and_every_cost_in_the_comparison_lines(tmp_path: Path) -> None:
    trace = str(_trace(tmp_path))
    piped = _bench("--trace", trace, "--policies", "reactive,prewarm", "--json", "-")
    assert piped.returncode == 0, piped.stderr
    document = json.loads(piped.stdout)  # stdout is the JSON document alone
    assert list(document["policies"]) == ["reactive", "prewarm"]
    plot = tmp_path / "bench.png"
    shown = _bench("--trace", trace, "--policies", "reactive,prewarm", "--plot", str(plot))
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.startswith("prewarm vs ")]
    ours = document["policies"]["prewarm"]["gpu_node_hours"]
    theirs = document["policies"]["reactive"]["gpu_node_hours"]
    # Cold starts, idle memory and the node-hours they cost, both figures and their ratio.
    assert line.startswith("prewarm vs reactive: ")
    assert "the idle GPU GB-hours" in line
    assert line.endswith(f"the GPU node-hours ({ours:,.1f} vs {theirs:,.1f})")
    # The plot's markers are explained in the text output.
    assert f"plot: {plot}: stars mark each policy at its own setting" in shown.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policies", "reactive,lambda"], "unknown policy lambda"),
        (["--catalog", "{catalog}"], "weights_gb must be > 0"),
        (["--gpu-memory-budget", "-5"], "must be > 0"),
    ],
)
def test_bad_options_exit_2_with_one_message(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("models:\n  a: {weights_gb: -3}\n")
    args = [item.replace("{catalog}", str(catalog)) for item in extra]
    result = _bench("--trace", str(_trace(tmp_path)), *args)
    assert result.returncode == 2
    assert result.stderr.count("prewarm: error:") == 1
    assert message in result.stderr


def test_bad_trace_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,model,requests\nyesterday,a,1\n")
    result = _bench("--trace", str(bad))
    assert result.returncode == 2
    assert "bad timestamp" in result.stderr
    missing = _bench("--trace", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2
