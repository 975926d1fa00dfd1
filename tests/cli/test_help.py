"""What a new user reads first: ``--help`` and the one-line error for a broken ``--config``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prewarm.cli.help_format import first_sentence, reflow
from prewarm.cli.main import app

VERBS = [
    [],
    ["agent"],
    ["warm"],
    ["cancel"],
    ["pin"],
    ["unpin"],
    ["pause"],
    ["resume"],
    ["requests"],
    ["plan"],
    ["explain"],
    ["forecast"],
    ["backtest"],
    ["run"],
    ["demo"],
    ["bench"],
    ["handoff"],
    ["handoff", "wait"],
    ["handoff", "hold"],
    ["handoff", "path"],
]


def _help(verb: list[str]) -> str:
    result = CliRunner().invoke(app, [*verb, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("verb", VERBS, ids=lambda verb: " ".join(verb) or "prewarm")
def test_flags_show_no_type(verb: list[str]) -> None:
    text = _help(verb)
    assert "<bool>" not in text
    assert "--help" in text


def test_the_command_list_gives_each_verb_one_unbroken_sentence() -> None:
    lines = _help([]).splitlines()
    backtest = next(line for line in lines if "│ backtest" in line)
    assert "Score prewarm's forecaster against simple methods on the history's last part." in (
        backtest
    )
    demo = next(line for line in lines if "│ demo" in line)
    assert demo.rstrip(" │").endswith("on this machine.")


def test_the_json_convention_is_in_the_help() -> None:
    top = " ".join(_help([]).split())
    assert "--json PATH" in top
    assert "--json - writes only the JSON, to stdout" in top
    assert "--log-json" in top
    assert "PATH|-" in _help(["bench"])
    run = " ".join(_help(["run"]).split())
    assert "no --json" in run
    assert "--log-json" in run


def test_reflow_and_first_sentence() -> None:
    text = """Backtest over the history (20%, e.g. 30m
    or 0.5 days). Pre-warming metrics: spike
    recall.

    Second paragraph
    wrapped."""
    assert reflow(text) == (
        "Backtest over the history (20%, e.g. 30m or 0.5 days). Pre-warming metrics: spike "
        "recall.\n\nSecond paragraph wrapped."
    )
    assert first_sentence(text) == "Backtest over the history (20%, e.g. 30m or 0.5 days)."


def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("daemon:\n  mode: active\n    tick_s: 15\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "prewarm", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"prewarm: error: {config}:3:11: invalid YAML: ")
    assert "mapping values are not allowed here" in done.stderr
