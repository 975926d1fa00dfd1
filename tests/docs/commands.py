"""The shell commands the README and ``docs/`` show a user, extracted from their fenced blocks.

Owns: finding every command line in the ``bash``/``sh``/``shell``/``console`` blocks of the
documents a user reads (backslash continuations joined, comment lines and trailing ``# ...``
comments dropped, a ``$ `` prompt removed), so that a test can run each one.
Must not: interpret the commands; the registry in ``test_documented_commands`` says how each is run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
_TRAILING_COMMENT = re.compile(r"\s+#\s.*$")


@dataclass(frozen=True, slots=True)
class DocumentedCommand:
    """One command as a user would copy it: the document, its 1-based line, the text."""

    document: str
    line: int
    text: str


def user_documents(root: Path = REPO_ROOT) -> list[Path]:
    """The README and every page under ``docs/``, in a stable order."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def commands_in(path: Path, root: Path = REPO_ROOT) -> list[DocumentedCommand]:
    """The commands of ``path``'s shell blocks, each with the line it starts on."""
    found: list[DocumentedCommand] = []
    language: str | None = None
    pending = ""
    pending_line = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(raw)
        if fence:
            language = None if language is not None else fence.group("lang")
            continue
        if language not in SHELL_LANGUAGES:
            continue
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        line = _TRAILING_COMMENT.sub("", line.removeprefix("$ "))
        if not pending:
            pending_line = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        text = " ".join((pending + line).split())
        pending = ""
        if text:
            found.append(DocumentedCommand(str(path.relative_to(root)), pending_line, text))
    return found


def documented_commands(root: Path = REPO_ROOT) -> list[DocumentedCommand]:
    """Every command of every user document."""
    return [command for path in user_documents(root) for command in commands_in(path, root)]
