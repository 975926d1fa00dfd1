"""Trace CSV parsing: the three resolutions, both timestamp forms, and every malformed case."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidInput
from forecaster.sources.trace import infer_bucket_s, read_trace, read_trace_with_info


def _write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_per_minute_trace_is_dense_with_zeros_where_rows_are_omitted(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "timestamp,model,requests\n"
        "2025-01-01T00:00:00Z,a,3\n"
        "2025-01-01T00:00:00Z,b,1\n"
        "2025-01-01T00:02:00Z,a,5\n"
        "2025-01-01T00:03:00Z,b,2\n",
    )
    batch, info = read_trace_with_info(path)
    assert info.bucket_s == 60.0
    assert batch.models == ("a", "b")
    assert batch.step_s == 60.0
    np.testing.assert_array_equal(batch.counts, [[3, 0, 5, 0], [1, 0, 0, 2]])
    assert batch.start_s == 1735689600.0


def test_ten_minute_buckets_are_inferred(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "timestamp,model,requests\n2025-03-03T00:00:00Z,m,10\n2025-03-03T00:10:00Z,m,20\n"
        "2025-03-03T00:30:00Z,m,5\n",
    )
    batch = read_trace(path)
    assert batch.step_s == 600.0
    np.testing.assert_array_equal(batch.counts, [[10, 20, 0, 5]])


def test_per_request_trace_with_fractional_seconds_is_bucketed(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "timestamp,model\n2023-11-16T18:15:46.680590Z,x\n2023-11-16T18:15:50.995169Z,x\n"
        "2023-11-16T18:16:01.2Z,x\n2023-11-16T18:17:59.9Z,y\n",
    )
    batch, info = read_trace_with_info(path)
    assert info.bucket_s is None
    assert batch.step_s == 60.0
    assert batch.start_s % 60 == 0
    np.testing.assert_array_equal(batch.counts, [[2, 1, 0], [0, 0, 1]])


def test_epoch_timestamps_and_coarser_step(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,model,requests\n600,m,1\n660,m,2\n720,m,3\n780,m,4\n")
    batch = read_trace(path, step_s=120)
    np.testing.assert_array_equal(batch.counts, [[3, 7]])


def test_fractional_epoch_seconds_are_per_request_times(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,model\n1741000000.5,m\n1741000003.25,m\n1741000071.,m\n")
    batch, info = read_trace_with_info(path)
    assert info.bucket_s is None
    assert batch.start_s == 1741000000 - 1741000000 % 60
    np.testing.assert_array_equal(batch.counts, [[2, 1]])


def test_finer_step_than_buckets_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,model,requests\n0,m,1\n600,m,2\n")
    with pytest.raises(InvalidInput, match="not a whole multiple"):
        read_trace(path, step_s=60)


def test_gzip_is_read(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b"timestamp,model,requests\n0,m,1\n60,m,2\n"))
    np.testing.assert_array_equal(read_trace(path).counts, [[1, 2]])


def test_infer_bucket_width() -> None:
    assert infer_bucket_s(np.array([0.0, 60.0, 180.0])) == 60.0
    assert infer_bucket_s(np.array([0.0, 0.5, 2.0])) is None
    assert infer_bucket_s(np.array([5.0])) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: empty file"),
        ("timestamp,requests\n0,1\n", "line 1: missing column"),
        ("time,model,requests\n0,m,1\n", "line 1: missing column"),
        ("timestamp,model,requests\n", "line 2: no data rows"),
        ("timestamp,model,requests\n0,m,1\nyesterday,m,1\n", "line 3: epoch timestamp|line 3: bad"),
        (
            "timestamp,model,requests\n2025-01-01T00:00:00Z,m,1\nnot-a-time,m,1\n",
            "line 3: bad timestamp",
        ),
        (
            "timestamp,model,requests\n2025-01-01T00:00:00Z,m,1\n2025-13-01T00:00:00Z,m,1\n",
            "line 3: bad timestamp",
        ),
        ("timestamp,model,requests\n0,m,1\n60,m,-2\n", "line 3: requests -2 is negative"),
        ("timestamp,model,requests\n0,m,1\n60,m,many\n", "line 3: requests 'many' is not a number"),
        ("timestamp,model,requests\n0,m,1\n60,m,nan\n", "line 3: requests 'nan' is not a number"),
        ("timestamp,model,requests\n0,,1\n", "line 2: empty model id"),
        ("timestamp,model,requests\n0,m,1\n,m,1\n", "line 3: empty timestamp"),
        ("timestamp,model,requests\n0,m,1\n60,m,1,extra\n", "line 3"),
    ],
)
def test_malformed_traces_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InvalidInput, match=message) as caught:
        read_trace(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "rows",
    [
        # grouped by model, each model's rows in time order (a common export order)
        ["0,a,1", "60,a,2", "180,a,1", "0,b,4", "120,b,1"],
        # no order at all
        ["180,a,1", "120,b,1", "0,b,4", "60,a,2", "0,a,1"],
    ],
)
def test_rows_in_any_order_read_like_sorted_rows(tmp_path: Path, rows: list[str]) -> None:
    header = "timestamp,model,requests\n"
    ordered = sorted(rows, key=lambda row: int(row.split(",")[0]))
    expected, expected_info = read_trace_with_info(
        _write(tmp_path, header + "\n".join(ordered) + "\n")
    )
    path = tmp_path / "unordered.csv"
    path.write_text(header + "\n".join(rows) + "\n")
    batch, info = read_trace_with_info(path)
    assert batch.models == expected.models == ("a", "b")
    assert (batch.start_s, batch.step_s) == (expected.start_s, expected.step_s) == (0.0, 60.0)
    np.testing.assert_array_equal(batch.counts, expected.counts)
    np.testing.assert_array_equal(batch.counts, [[1, 2, 0, 1], [4, 0, 1, 0]])
    assert info.bucket_s == expected_info.bucket_s == 60.0


def test_per_request_step_applies_to_per_request_traces_only(tmp_path: Path) -> None:
    per_request = _write(
        tmp_path,
        "timestamp,model\n"
        "2025-01-01T00:00:00.5Z,m\n2025-01-01T00:00:03.25Z,m\n2025-01-01T00:00:17.1Z,m\n",
    )
    bucketed = tmp_path / "bucketed.csv"
    bucketed.write_text("timestamp,model,requests\n0,m,1\n600,m,2\n")
    batch, info = read_trace_with_info(per_request, per_request_step_s=10.0)
    assert info.bucket_s is None
    assert batch.step_s == 10.0
    np.testing.assert_array_equal(batch.counts, [[2, 1]])
    batch, info = read_trace_with_info(bucketed, per_request_step_s=10.0)
    assert info.bucket_s == batch.step_s == 600.0
    np.testing.assert_array_equal(batch.counts, [[1, 2]])


def test_missing_file_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read trace"):
        read_trace(tmp_path / "absent.csv")


def test_requests_column_is_optional_and_defaults_to_one(tmp_path: Path) -> None:
    path = _write(tmp_path, "model,timestamp\nm,0\nm,0\nm,60\n")
    batch = read_trace(path)
    np.testing.assert_array_equal(batch.counts, [[2, 1]])
