"""Backtest metrics and the ``prewarm forecast`` / ``prewarm backtest`` commands."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.errors import InvalidInput
from forecaster.backtest import METHODS, plan_backtest, run_backtest
from forecaster.metrics import naive_scale, score
from prewarm.cli.main import app
from prewarm.cli.progress import PlainProgress
from prewarm.data import builtin_traces, resolve_trace
from tests.forecaster.conftest import synthetic_batch, write_trace


def test_metrics_on_known_values() -> None:
    actual = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    point = actual + 1.0
    scores = score(actual, point, actual + 0.5, np.array([2.0]))
    assert scores.mase == pytest.approx(0.5)
    assert scores.coverage_p90 == 1.0
    assert scores.under_forecast_rate == 0.0
    assert scores.pinball_p90 == pytest.approx(0.1 * 0.5 / 2.0)
    np.testing.assert_allclose(naive_scale(np.array([[1.0, 3.0, 2.0]]), 1), [1.5])


def test_backtest_runs_every_method_on_the_same_origins() -> None:
    batch = synthetic_batch(models=2, days=2.5, step_s=600)
    result = run_backtest(batch, horizon_steps=2)
    assert list(result.scores) == list(METHODS)
    assert result.plan.season == 144
    for scores in result.scores.values():
        assert scores.series == 2
        assert np.isfinite(scores.mase)
        assert 0 <= scores.coverage_p90 <= 1


def test_too_short_for_a_backtest_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="too short"):
        plan_backtest(synthetic_batch(models=1, days=5 / 1440), horizon_steps=15)


def test_backtest_json_has_exactly_the_documented_shape(tmp_path: Path) -> None:
    trace = write_trace(synthetic_batch(models=2, days=0.3, seed=4), tmp_path / "t.csv")
    out = tmp_path / "result.json"
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            "--trace",
            str(trace),
            "--horizon",
            "10m",
            "--json",
            str(out),
            "--methods",
            "prewarm,seasonal-naive",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert set(document) == {"trace", "horizon_s", "methods", "notes"}
    assert document["trace"] == str(trace)
    assert document["horizon_s"] == 600
    assert set(document["methods"]) == {"prewarm", "seasonal-naive"}
    for scores in document["methods"].values():
        assert set(scores) == {
            "mase",
            "mase_median",
            "pinball_p90",
            "coverage_p90",
            "under_forecast_rate",
            "series",
            "spike_recall_1m",
            "spike_recall_5m",
            "spike_recall_15m",
            "false_spike_rate",
            "peak_error",
            "spikes",
        }
        assert isinstance(scores["series"], int)
        assert isinstance(scores["spikes"], int)


def test_backtest_json_with_short_histories(tmp_path: Path) -> None:
    trace = write_trace(synthetic_batch(models=2, days=0.3, seed=4), tmp_path / "t.csv")
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            "--trace",
            str(trace),
            "--horizon",
            "5m",
            "--methods",
            "naive",
            "--max-origins",
            "3",
            "--history",
            "1h, 90m",
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"trace", "horizon_s", "methods", "history", "notes"}
    assert [entry["history_s"] for entry in document["history"]] == [3600, 5400]
    for entry in document["history"]:
        assert set(entry) == {
            "history_s",
            "origins",
            "methods",
            "mase_ratio_vs_naive",
            "pinball_ratio_vs_naive",
            "beats_naive",
        }
        assert entry["origins"] == 3
        assert set(entry["methods"]) == {"prewarm", "naive"}
        ratio = entry["methods"]["prewarm"]["mase"] / entry["methods"]["naive"]["mase"]
        assert entry["mase_ratio_vs_naive"] == pytest.approx(ratio)
        assert entry["beats_naive"] == (ratio < 1)


@pytest.mark.parametrize("history", ["6x", "0m", "6h,,12h"])
def test_bad_history_is_one_clear_error(history: str) -> None:
    result = CliRunner().invoke(app, ["backtest", "--trace", "x", "--history", history])
    assert isinstance(result.exception, InvalidInput)
    assert "--history" in str(result.exception)


def test_bad_history_exits_2(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "prewarm", "backtest", "--trace", "x", "--history", "6x"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 2
    assert process.stderr.count("prewarm: error:") == 1
    assert "--history '6x'" in process.stderr


def test_backtest_table_without_json(tmp_path: Path) -> None:
    trace = write_trace(synthetic_batch(models=1, days=0.3, seed=2), tmp_path / "t.csv")
    result = CliRunner().invoke(
        app,
        ["backtest", "--trace", str(trace), "--methods", "prewarm,seasonal-naive"],
        env={"COLUMNS": "200"},  # a terminal wide enough for every column's name
    )
    assert result.exit_code == 0, result.output
    assert "prewarm" in result.output
    assert "cov_p90" in result.output


def test_forecast_json(tmp_path: Path) -> None:
    trace = write_trace(synthetic_batch(models=2, days=0.2, seed=1), tmp_path / "t.csv")
    result = CliRunner().invoke(
        app, ["forecast", "--trace", str(trace), "--horizon", "30m", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["horizon_s"] == 1800
    assert document["step_s"] == 60
    for item in document["models"].values():
        assert len(item["mean"]) == 30
        assert set(item["quantiles"]) == {"p50", "p90"}
        assert all(
            a <= b + 1e-9
            for a, b in zip(item["quantiles"]["p50"], item["quantiles"]["p90"], strict=True)
        )
        assert 0 <= item["p_any_within_horizon"] <= 1


def test_forecast_table(tmp_path: Path) -> None:
    trace = write_trace(synthetic_batch(models=2, days=0.2, seed=1), tmp_path / "t.csv")
    result = CliRunner().invoke(app, ["forecast", "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    assert "model-0" in result.output


def test_malformed_trace_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("timestamp,model,requests\n0,m,1\n60,m,-5\n", encoding="utf-8")
    out = tmp_path / "result.json"
    process = subprocess.run(
        [sys.executable, "-m", "prewarm", "backtest", "--trace", str(trace), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 2
    assert "prewarm: error:" in process.stderr
    assert "line 3" in process.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [trace]


def test_history_options_are_exclusive() -> None:
    result = CliRunner().invoke(app, ["forecast"])
    assert isinstance(result.exception, InvalidInput)
    result = CliRunner().invoke(app, ["backtest", "--trace", "x", "--prometheus", "http://x"])
    assert isinstance(result.exception, InvalidInput)


def test_builtin_traces_resolve_and_unknown_names_are_listed() -> None:
    assert "worldcup98-1w" in builtin_traces()
    path = resolve_trace("builtin:worldcup98-1w")
    assert path.is_file()
    assert path.stat().st_size < 1_000_000
    assert (path.parent / "worldcup98-COPYRIGHT.html").is_file()
    with pytest.raises(InvalidInput, match="builtin:worldcup98-1w"):
        resolve_trace("builtin:nope")
    with pytest.raises(InvalidInput, match="does not exist"):
        resolve_trace("/nonexistent/trace.csv")


def test_plain_progress_is_throttled_and_gives_an_eta() -> None:
    now = [0.0]
    out = io.StringIO()
    report = PlainProgress(out, every_s=10.0, clock=lambda: now[0])
    for second, fraction in ((0, 0.0), (5, 0.1), (10, 0.25), (12, 0.3), (20, 0.5), (40, 1.0)):
        now[0] = float(second)
        report("prewarm", fraction)
    assert out.getvalue().splitlines() == [
        "backtest: prewarm 25% after 10s, about 30s left",
        "backtest: prewarm 50% after 20s, about 20s left",
        "backtest: prewarm 100% after 40s, done",
    ]
