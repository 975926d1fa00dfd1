"""``load_bench_input``: trace files of every shape become a replay on the simulator's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from planner.catalog import Catalog
from prewarm.sim.bench import MAX_PER_REQUEST_TICKS, load_bench_input


def _per_request(path: Path, offsets_s: list[float]) -> Path:
    start = np.datetime64("2025-01-01T00:00:00", "us")
    stamps = [
        np.datetime_as_string(start + np.timedelta64(round(s * 1e6), "us")) + "Z" for s in offsets_s
    ]
    path.write_text("timestamp,model\n" + "".join(f"{t},m\n" for t in stamps))
    return path


def test_short_per_request_trace_replays_on_a_10_s_grid(tmp_path: Path) -> None:
    path = _per_request(tmp_path / "day.csv", [0.5, 3.25, 17.1, 3_600.0, 86_000.3])
    bench = load_bench_input(path, Catalog())
    assert bench.trace.dt_s == 10.0
    assert bench.trace.requests == 5


def test_long_per_request_trace_is_coarsened_to_stay_within_the_tick_cap(tmp_path: Path) -> None:
    # 30 days: 259,200 ticks of 10 s, over the cap; 20 s ticks fit.
    thirty_days = 30 * 86_400.0
    offsets = [0.5, 3.25, 17.1, thirty_days / 2, thirty_days - 0.7]
    bench = load_bench_input(_per_request(tmp_path / "month.csv", offsets), Catalog())
    assert bench.trace.dt_s == 20.0
    assert bench.trace.ticks <= MAX_PER_REQUEST_TICKS
    assert bench.trace.requests == 5
    # The first three requests share the first 20 s tick; nothing is lost or moved far.
    assert bench.trace.counts[0, 0] == 3
    assert bench.trace.counts[0, -1] == 1


def test_bucketed_trace_keeps_its_own_grid_however_long(tmp_path: Path) -> None:
    path = tmp_path / "hourly.csv"
    hours = [h for h in range(24 * 200) if h % 7 != 3]  # hourly buckets, zero rows omitted
    path.write_text("timestamp,model,requests\n" + "".join(f"{h * 3600},m,2\n" for h in hours))
    bench = load_bench_input(path, Catalog())
    assert bench.trace.dt_s == 60.0
    assert bench.trace.source_step_s == 3600.0
    assert bench.trace.requests == 2 * len(hours)
