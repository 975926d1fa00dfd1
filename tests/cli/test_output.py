"""Tables the CLI prints: readable when written to a pipe or a file."""

from __future__ import annotations

import pytest

from prewarm.cli.output import print_table

COLUMNS = [f"a_long_column_name_{k}" for k in range(8)]


def test_a_piped_table_keeps_each_row_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    print_table("results", ["policy", *COLUMNS], [["prewarm", *[0.000123456] * 8]])
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if "prewarm" in line]
    assert len(rows) == 1
    assert rows[0].count("0.0001235") == 8
    assert all("a_long_column_name_7" in line for line in lines if "a_long_column_name_0" in line)


def test_large_figures_are_whole_numbers_with_separators(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    print_table("t", ["name", "idle", "ratio", "none"], [["x", 309328.57, 0.00019, float("nan")]])
    row = next(line for line in capsys.readouterr().out.splitlines() if " x " in line)
    assert "309,329" in row
    assert "0.00019" in row
    assert " - " in row
