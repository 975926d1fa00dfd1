"""How ``--help`` reads: one-line summaries in command lists, reflowed text, flags without a type.

Owns two fixes to typer's rich help, applied once by :mod:`prewarm.cli.main`:

- a command's docstring is wrapped at 100 columns in the source; typer's rich mode keeps those
  hard line breaks, so ``prewarm --help`` showed ``backtest``'s summary broken mid-sentence.
  :func:`tidy_help` gives each command its first sentence as the short help (the command list)
  and joins the lines of each paragraph of its help, which rich then wraps to the terminal;
- typer (0.29) prints a boolean flag's type as ``<bool>`` beside it although a flag takes no
  value; :func:`flags_without_type` leaves the type column of flags empty.

Must not: change what any option parses.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from typer.core import TyperOption
from typer.models import CommandInfo

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")
"""A sentence ends at ``.``, ``!`` or ``?`` followed by a space and a capital (``e.g. 30m`` and
``0.5`` do not end one)."""


def reflow(text: str) -> str:
    """``text`` with the line breaks inside each paragraph joined into spaces; paragraphs (blank
    lines) and rich's ``\\b`` no-rewrap marker are kept."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    out = []
    for paragraph in paragraphs:
        if paragraph.startswith("\b"):
            out.append(paragraph)
        else:
            out.append(" ".join(line.strip() for line in paragraph.splitlines()))
    return "\n\n".join(out)


def first_sentence(text: str) -> str:
    """The first sentence of ``text``'s first paragraph, on one line."""
    paragraph = reflow(text).split("\n\n", 1)[0]
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0].strip()


def _tidy(info: CommandInfo) -> None:
    text = info.help if info.help is not None else inspect.getdoc(info.callback) or ""
    if not text:
        return
    info.help = reflow(text)
    if info.short_help is None:
        info.short_help = first_sentence(text)


def tidy_help(app: typer.Typer) -> None:
    """Reflow every command's help and give it a one-sentence short help, sub-apps included."""
    for command in app.registered_commands:
        _tidy(command)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            tidy_help(group.typer_instance)


_display_type_rich = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """No type for a flag (it takes no value); otherwise what typer shows."""
    if self.is_flag and self.metavar is None:
        return None
    return _display_type_rich(self, ctx)


def flags_without_type() -> None:
    """Show no ``<bool>`` beside flags in ``--help`` (idempotent)."""
    TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]
