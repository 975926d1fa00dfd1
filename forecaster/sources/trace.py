"""Reads the project's trace CSV (`docs/traces.md`) into a dense :class:`SeriesBatch`.

Owns: parsing and validating ``timestamp,model,requests`` files (ISO-8601 UTC or epoch
seconds, fractions allowed; ``requests`` optional, default 1; zero rows may be omitted; rows in
any order), inferring the bucket width (per-request, 1 min, 10 min, any regular width) and
re-bucketing onto a step grid.
Must not: guess around malformed input. Every problem is one :class:`InvalidInput` naming the file
and the 1-based line number (the header is line 1), so the CLI exits 2 before writing anything.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.types import FloatArray, SeriesBatch

REQUIRED_COLUMNS = ("timestamp", "model")
DEFAULT_PER_REQUEST_STEP_S = 60.0
_EPOCH = re.compile(r"^\s*-?\d+\s*$")


@dataclass(frozen=True, slots=True)
class TraceInfo:
    """What the reader learnt about a trace besides its counts."""

    path: Path
    bucket_s: float | None
    """The inferred bucket width in seconds; ``None`` for a per-request (irregular) trace."""
    rows: int


def read_trace(path: Path | str, *, step_s: float | None = None) -> SeriesBatch:
    """The trace at ``path`` as per-step counts of every model in it (0 where rows are omitted).

    ``step_s=None`` keeps the trace's own bucket width (60 s for per-request traces). A ``step_s``
    that is a whole multiple of the bucket width sums buckets; a finer one is an error.
    Raises :class:`InvalidInput` naming the line for any malformed input.
    """
    batch, _ = read_trace_with_info(path, step_s=step_s)
    return batch


def read_trace_with_info(
    path: Path | str, *, step_s: float | None = None, per_request_step_s: float | None = None
) -> tuple[SeriesBatch, TraceInfo]:
    """Like :func:`read_trace`, also returning what was inferred about the file.

    ``per_request_step_s`` is the grid of a per-request trace when ``step_s`` is ``None`` (a
    bucketed trace keeps its own width then); it lets a caller read the file once whatever it is.
    """
    source = Path(path)
    frame = _load_frame(source)
    seconds = _parse_timestamps(source, frame["timestamp"])
    requests = _parse_requests(source, frame)
    models = frame["model"].astype(str)
    blank = models.str.strip() == ""
    if bool(blank.any()):
        raise InvalidInput(f"{source}: line {_line(blank)}: empty model id")
    if bool((np.diff(seconds) < 0).any()):
        # The contract does not ask for any row order (a file grouped by model is as valid).
        order = np.argsort(seconds, kind="stable")
        seconds, requests = seconds[order], requests[order]
        models = models.iloc[order].reset_index(drop=True)
    bucket_s = infer_bucket_s(seconds)
    grid_s = _grid_step(
        source, bucket_s, per_request_step_s if bucket_s is None and step_s is None else step_s
    )
    # A bucketed trace's grid starts at its first bucket; a per-request trace's grid is aligned
    # to whole steps since the epoch (so minute buckets start on the minute).
    first = float(seconds[0])
    start_s = first if bucket_s is not None else math.floor(first / grid_s) * grid_s
    columns = np.floor((seconds - start_s) / grid_s + 1e-9).astype(np.int64)
    steps = int(columns[-1]) + 1
    codes, uniques = pd.factorize(models, sort=True)
    counts = np.zeros((len(uniques), steps), dtype=np.float64)
    np.add.at(counts, (codes, columns), requests)
    ids = tuple(ModelId(str(name)) for name in uniques)
    batch = SeriesBatch(models=ids, start_s=start_s, step_s=grid_s, counts=counts)
    return batch, TraceInfo(path=source, bucket_s=bucket_s, rows=len(frame))


def infer_bucket_s(seconds: FloatArray) -> float | None:
    """The bucket width of sorted timestamps, or ``None`` when they are irregular (per-request).

    Bucketed traces have timestamps on a regular grid: every gap between distinct timestamps is a
    whole multiple (>= 1) of the smallest one, which is at least one second. A trace with a single
    distinct timestamp is treated as per-request.
    """
    distinct = np.unique(seconds)
    if distinct.size < 2:
        return None
    gaps = np.diff(distinct)
    smallest = float(gaps.min())
    if smallest < 1.0 - 1e-9:
        return None
    ratios = gaps / smallest
    if np.all(np.abs(ratios - np.round(ratios)) < 1e-6):
        return smallest
    return None


def _grid_step(source: Path, bucket_s: float | None, step_s: float | None) -> float:
    if bucket_s is None:
        return float(step_s) if step_s is not None else DEFAULT_PER_REQUEST_STEP_S
    if step_s is None:
        return bucket_s
    ratio = step_s / bucket_s
    if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
        raise InvalidInput(
            f"{source}: buckets are {bucket_s:g} s wide; a step of {step_s:g} s is not a whole "
            f"multiple of that (use a step of {bucket_s:g} s or a multiple)"
        )
    return float(step_s)


def _open_text(source: Path) -> str:
    try:
        raw = source.read_bytes()
    except OSError as error:
        raise InvalidInput(f"cannot read trace {source}: {error.strerror or error}") from error
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise InvalidInput(f"{source}: not a valid gzip file: {error}") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"{source}: not UTF-8 text ({error.reason})") from error


def _load_frame(source: Path) -> pd.DataFrame:
    text = _open_text(source)
    if not text.strip():
        raise InvalidInput(
            f"{source}: line 1: empty file; expected the header 'timestamp,model,requests'"
        )
    header = next(csv.reader(io.StringIO(text.splitlines()[0])))
    names = [name.strip() for name in header]
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing:
        raise InvalidInput(
            f"{source}: line 1: missing column(s) {', '.join(missing)}; the header must be "
            f"'timestamp,model[,requests]', got {','.join(names)!r}"
        )
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            on_bad_lines="error",
        )
    except (pd.errors.ParserError, ValueError) as error:
        raise InvalidInput(f"{source}: malformed CSV: {_parser_message(error)}") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    if frame.empty:
        raise InvalidInput(f"{source}: line 2: no data rows after the header")
    return frame


def _parser_message(error: Exception) -> str:
    message = str(error).strip()
    match = re.search(r"line (\d+)", message)
    if match:
        return f"line {match.group(1)}: {message}"
    return message


def _line(mask: pd.Series) -> int:
    """1-based file line of the first true entry (the header is line 1)."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 2


def _parse_timestamps(source: Path, column: pd.Series) -> FloatArray:
    text = column.astype(str).str.strip()
    empty = text == ""
    if bool(empty.any()):
        raise InvalidInput(f"{source}: line {_line(empty)}: empty timestamp")
    epoch = text.str.fullmatch(r"-?\d+(?:\.\d*)?")
    if bool(epoch.all()):
        values: FloatArray = text.astype(np.float64).to_numpy()
        negative = values < 0
        if negative.any():
            line = int(np.flatnonzero(negative)[0]) + 2
            raise InvalidInput(f"{source}: line {line}: negative epoch timestamp")
        return values
    if bool(epoch.iloc[0]):
        # The file starts with epoch seconds: the first row that is not is the bad one.
        line = _line(~epoch)
        raise InvalidInput(
            f"{source}: line {line}: bad timestamp {text[~epoch].iloc[0]!r}; this file uses "
            "epoch seconds"
        )
    if bool(epoch.any()):
        line = _line(epoch)
        raise InvalidInput(
            f"{source}: line {line}: epoch timestamp {text[epoch].iloc[0]!r} in a file of "
            "ISO-8601 timestamps; use one form for the whole file"
        )
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna()
    if bool(bad.any()):
        line = _line(bad)
        value = text[bad].iloc[0]
        raise InvalidInput(
            f"{source}: line {line}: bad timestamp {value!r}; use ISO-8601 UTC "
            "(2025-03-03T00:00:00Z) or epoch seconds (1741000000 or 1741000000.25)"
        )
    nanos = parsed.dt.as_unit("ns").astype("int64").to_numpy()
    seconds: FloatArray = nanos.astype(np.float64) / 1e9
    return seconds


def _parse_requests(source: Path, frame: pd.DataFrame) -> FloatArray:
    if "requests" not in frame.columns:
        return np.ones(len(frame), dtype=np.float64)
    text = frame["requests"].astype(str).str.strip()
    values = pd.to_numeric(text.where(text != "", "1"), errors="coerce")
    bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if bool(bad.any()):
        line = _line(bad)
        raise InvalidInput(
            f"{source}: line {line}: requests {text[bad].iloc[0]!r} is not a number; "
            "it must be a count >= 0"
        )
    array: FloatArray = values.to_numpy(dtype=np.float64)
    negative = array < 0
    if negative.any():
        line = int(np.flatnonzero(negative)[0]) + 2
        raise InvalidInput(
            f"{source}: line {line}: requests {array[negative][0]:g} is negative; "
            "it must be a count >= 0"
        )
    return array
