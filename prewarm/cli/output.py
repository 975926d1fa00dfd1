"""How every command prints its result: tables for people, JSON for scripts.

The ``--json`` convention, the same for every verb with a result (``forecast``, ``backtest``,
``bench``, ``demo``, the control verbs, ``handoff wait`` and ``handoff path``):

- ``--json PATH`` writes the command's machine-readable result to PATH (atomically: a failure
  leaves no half-written file) and prints the usual human output on stdout;
- ``--json -`` writes the result to stdout and leaves the human output out (progress, warnings and
  notes stay on stderr), so stdout is exactly one JSON document;
- a bare ``--json`` (followed by another option or by nothing), the older form, means ``--json -``
  and says once on stderr that it is deprecated.

``run`` and ``agent`` are daemons with no single result: the global ``--log-json`` makes their
logs JSON lines instead. Must not: decide what a command's document holds (each command does).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from common.errors import InvalidInput

STDOUT = "-"
"""``--json -``: the result on stdout."""

_BARE = "\x00bare"
"""What :class:`JsonCommand` hands the option for a bare ``--json`` (no path can hold a NUL)."""

JSON_HELP = (
    "Write the result as JSON to PATH; '-' writes it to stdout instead of the tables "
    "(bare --json: deprecated form of '--json -')."
)

DEPRECATED_BARE = (
    "prewarm: note: a bare --json is deprecated; write '--json -' for stdout or "
    "'--json PATH' for a file\n"
)

JsonOption = Annotated[
    str | None,
    typer.Option("--json", metavar="PATH|-", help=JSON_HELP, show_default=False),
]
"""The ``--json`` option of every command with a result; pair it with ``cls=JsonCommand``."""


def with_bare_json(args: list[str]) -> list[str]:
    """``args`` with a bare ``--json`` (the last argument, or one followed by another option)
    turned into ``--json=<bare>``, so that the option can take a value and still be a flag."""
    out: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return out + args[index:]
        following = args[index + 1] if index + 1 < len(args) else None
        if arg == "--json" and (
            following is None or (following.startswith("-") and following != STDOUT)
        ):
            out.append(f"--json={_BARE}")
        else:
            out.append(arg)
    return out


def json_value_as_argument(args: list[str]) -> list[str] | None:
    """``args`` with the value after ``--json`` given back to the positional arguments (the old
    flag form before an argument: ``explain --json llama-70b``); None when there is none."""
    for index, arg in enumerate(args[:-1]):
        if arg == "--":
            return None
        if arg == "--json" and args[index + 1] != STDOUT:
            return [*args[:index], f"--json={_BARE}", *args[index + 1 :]]
    return None


class JsonCommand(TyperCommand):
    """A command whose ``--json`` takes a path, ``-``, or nothing (the deprecated flag form)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Parse ``args`` after rewriting a bare ``--json`` (see :func:`with_bare_json`).

        When ``--json`` took the word a required argument needed, the command was written in the
        old flag form (``explain --json llama-70b``): it is parsed again that way.
        """
        rewritten = with_bare_json(args)
        try:
            # A copy: the parser consumes the list it is given.
            return super().parse_args(ctx, list(rewritten))
        except typer.BadParameter as error:
            legacy = json_value_as_argument(rewritten)
            missing_argument = error.param is not None and error.param.param_type_name == "argument"
            if legacy is None or not missing_argument:
                raise
            return super().parse_args(ctx, legacy)


@dataclass(frozen=True, slots=True)
class JsonOutput:
    """Where a command's JSON result goes: nowhere, a file, or stdout (then no human output)."""

    path: Path | None = None
    stdout: bool = False

    @classmethod
    def parse(cls, value: str | None) -> JsonOutput:
        """The destination of a ``--json`` value; :class:`InvalidInput` (before any work) when a
        file's directory does not exist. A bare ``--json`` prints the deprecation note."""
        if value is None:
            return cls()
        if value == _BARE:
            sys.stderr.write(DEPRECATED_BARE)
            return cls(stdout=True)
        if value == STDOUT:
            return cls(stdout=True)
        if not value:
            raise InvalidInput("--json needs a path, or '-' for stdout")
        path = Path(value)
        directory = path.parent if str(path.parent) else Path(".")
        if not directory.is_dir():
            raise InvalidInput(f"--json {value}: directory {directory} does not exist")
        return cls(path=path)

    @property
    def human(self) -> bool:
        """Whether the human output goes to stdout (everything but ``--json -``)."""
        return not self.stdout

    def write(self, document: Any) -> None:
        """Write ``document`` where ``--json`` said; nothing when it was not given."""
        if self.stdout:
            write_json(document, None)
        elif self.path is not None:
            write_json(document, self.path)


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
