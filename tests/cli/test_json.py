"""One ``--json`` convention across verbs (``prewarm.cli.output``): ``--json PATH`` writes the
result to PATH beside the human output, ``--json -`` makes stdout exactly one JSON document, and
a bare ``--json`` (the old form) still means stdout with a deprecation note on stderr.

The verbs run through the real entry point in a subprocess, so stdout and stderr are the ones a
script sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import InvalidInput
from prewarm.cli.output import (
    DEPRECATED_BARE,
    JsonOutput,
    json_value_as_argument,
    with_bare_json,
)
from tests.forecaster.conftest import synthetic_batch, write_trace

PREWARM = [sys.executable, "-m", "prewarm"]
NOTE = DEPRECATED_BARE.strip()


def _prewarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PREWARM, *args], capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models, 0.3 days of one-minute steps: enough for forecast and backtest."""
    directory = tmp_path_factory.mktemp("trace")
    return write_trace(synthetic_batch(models=2, days=0.3, seed=3), directory / "t.csv")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--json"], ["--json=\x00bare"]),
        (["--json", "--trace", "x"], ["--json=\x00bare", "--trace", "x"]),
        (["--json", "-"], ["--json", "-"]),
        (["--json", "out.json", "--trace", "x"], ["--json", "out.json", "--trace", "x"]),
        (["--json=-"], ["--json=-"]),
        (["--", "--json"], ["--", "--json"]),
    ],
)
def test_a_bare_json_is_told_apart_from_one_with_a_value(
    args: list[str], expected: list[str]
) -> None:
    assert with_bare_json(args) == expected


def test_the_old_flag_form_before_an_argument_can_be_read_again() -> None:
    assert json_value_as_argument(["--json", "llama-70b", "--server", "x"]) == [
        "--json=\x00bare",
        "llama-70b",
        "--server",
        "x",
    ]
    assert json_value_as_argument(["--json", "-", "llama-70b"]) is None
    assert json_value_as_argument(["llama-70b", "--json"]) is None


def test_json_output_destinations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert JsonOutput.parse(None) == JsonOutput()
    assert JsonOutput.parse(None).human
    assert JsonOutput.parse("-") == JsonOutput(stdout=True)
    assert not JsonOutput.parse("-").human
    assert capsys.readouterr().err == ""
    assert JsonOutput.parse("\x00bare") == JsonOutput(stdout=True)
    assert capsys.readouterr().err.strip() == NOTE
    to_file = JsonOutput.parse(str(tmp_path / "r.json"))
    assert to_file.human
    to_file.write({"a": float("nan")})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None}
    with pytest.raises(InvalidInput, match="does not exist"):
        JsonOutput.parse(str(tmp_path / "missing" / "r.json"))


def test_forecast_json_to_stdout_to_a_file_and_the_old_flag(trace: Path, tmp_path: Path) -> None:
    dash = _prewarm("forecast", "--trace", str(trace), "--json", "-")
    assert dash.returncode == 0, dash.stderr
    document = json.loads(dash.stdout)  # stdout is the JSON document and nothing else
    assert set(document["models"]) == {"model-0", "model-1"}
    assert NOTE not in dash.stderr

    out = tmp_path / "forecast.json"
    to_file = _prewarm("forecast", "--trace", str(trace), "--json", str(out))
    assert to_file.returncode == 0, to_file.stderr
    assert json.loads(out.read_text()) == document
    assert "p50 peak" in to_file.stdout  # the table is still printed
    assert "p90 peak" in to_file.stdout

    # The old form: a bare flag, last or followed by another option.
    for args in (["--json"], ["--json", "--horizon", "30m"]):
        old = _prewarm("forecast", "--trace", str(trace), *args)
        assert old.returncode == 0, old.stderr
        assert json.loads(old.stdout)["models"].keys() == document["models"].keys()
        assert old.stderr.count(NOTE) == 1


def test_forecast_table_shows_mean_p50_and_p90(trace: Path) -> None:
    done = _prewarm("forecast", "--trace", str(trace))
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "model" in line)
    for column in ("mean", "p50 peak", "p90 peak", "P(any)"):
        assert column in header


def test_backtest_json_to_stdout(trace: Path) -> None:
    done = _prewarm("backtest", "--trace", str(trace), "--methods", "prewarm,naive", "--json", "-")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert list(document["methods"]) == ["prewarm", "naive"]


def test_a_missing_json_directory_exits_2_before_any_work(trace: Path, tmp_path: Path) -> None:
    done = _prewarm("forecast", "--trace", str(trace), "--json", str(tmp_path / "no" / "f.json"))
    assert done.returncode == 2
    assert done.stderr.startswith("prewarm: error: --json")
    assert done.stdout == ""


def test_handoff_path_json() -> None:
    done = _prewarm("handoff", "path", "--model", "org/llama", "--json", "-")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["model"] == "org/llama"
    assert document["path"].endswith("/current")
