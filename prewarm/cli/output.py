"""Helpers every command uses to print results: JSON for scripts, tables for people."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from common.errors import InvalidInput


def _finite(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with ``None``, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def dumps_json(document: Any) -> str:
    """Serialise ``document`` as strict JSON (NaN/inf become null), keys in insertion order."""
    return json.dumps(_finite(document), indent=2, allow_nan=False)


def write_json(document: Any, destination: Path | None) -> None:
    """Write ``document`` as JSON to ``destination`` atomically, or to stdout when it is ``None``.

    Atomic: a temporary file in the same directory is renamed over the target, so a failure never
    leaves a half-written file.
    """
    text = dumps_json(document) + "\n"
    if destination is None:
        typer.echo(text, nl=False)
        return
    directory = destination.parent if str(destination.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidInput(f"cannot write {destination}: directory {directory} does not exist")
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{destination.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


PIPE_COLUMNS = 200
"""Width of tables written to a pipe or a file (``COLUMNS`` overrides it)."""


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a human-readable table on stdout."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # A pipe or a file has no width: rich would assume 80 and fold numbers across lines.
        console = Console(width=PIPE_COLUMNS)
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)
