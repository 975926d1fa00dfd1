"""Traces bundled with prewarm (package data), and the resolver for ``--trace`` arguments.

Owns: the ``builtin:NAME`` namespace. Must not: download anything; every builtin is a file in
this package (see README.md here for origins and licences).
"""

from __future__ import annotations

from pathlib import Path

from common.errors import InvalidInput

DATA_DIR = Path(__file__).resolve().parent
BUILTIN_PREFIX = "builtin:"


def builtin_traces() -> dict[str, Path]:
    """Name -> path of every bundled trace (``NAME.csv`` or ``NAME.csv.gz`` in this package)."""
    out: dict[str, Path] = {}
    for path in sorted(DATA_DIR.iterdir()):
        for suffix in (".csv.gz", ".csv"):
            if path.name.endswith(suffix):
                out[path.name[: -len(suffix)]] = path
    return out


def resolve_trace(spec: str) -> Path:
    """The file a ``--trace`` argument names: ``builtin:NAME`` or a path to an existing file.

    Raises :class:`InvalidInput` listing the builtin names when ``NAME`` is unknown, or naming the
    path when it does not exist.
    """
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        traces = builtin_traces()
        if name not in traces:
            known = ", ".join(f"{BUILTIN_PREFIX}{item}" for item in traces) or "(none)"
            raise InvalidInput(f"unknown builtin trace {spec!r}; builtin traces: {known}")
        return traces[name]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InvalidInput(
            f"trace file {spec!r} does not exist (or is not a file); pass a path to a trace CSV "
            f"or one of: {', '.join(BUILTIN_PREFIX + name for name in builtin_traces())}"
        )
    return path
