"""``prewarm backtest`` at scale: the new backtest against today's, measured in the same run.

Usage: python benchmarks/backtest_scale.py [--case dense|sparse|both] [--repeats 3] [--json OUT]

Cases (generated here, seeded):
- ``dense``: 30 days x 1,000 per-minute series (``forecast_scale.synthetic_rows``: daily and
  weekly cycles, timer-driven and rare series, level shifts, bursts), 15-minute horizon.
- ``sparse``: the shape of a per-request LoRA-adapter trace: 88 adapters over 24 days, about
  27,000 requests in all (Zipf-like popularity; sessions arriving with a daily cycle, each a burst
  of a few requests over a few minutes), written as a per-request CSV and read back with
  ``read_trace`` (60 s steps, as ``prewarm backtest`` would), 15-minute horizon.

Timed: ``run_backtest`` with the vectorised methods (``prewarm``, ``naive``, ``seasonal-naive``;
``--methods`` to change), the median of ``--repeats`` runs. The statsmodels baselines
(``holt-winters``, ``ets``) fit every series one at a time whatever the origins; their cost is
measured on ``--baseline-series`` series and extrapolated linearly to all series (labelled so).

Today's code (``--today REV``, default ``55ac331``: ``forecaster/backtest.py`` as of that commit,
loaded from git, on today's engine): its ``prewarm`` run (up to 2,500 strided origins) runs whole
on ``--today-series`` of the series (default 100: all of the sparse case), evenly spread, and is
extrapolated linearly to every series (labelled so; the engine's work is vectorised across
series, so this overestimates today's cost a little); the new code runs on the same slice too,
which gives a ratio without extrapolation.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sklearn.ensemble  # noqa: F401  # imported here, outside the timings (slow to import)

# This checkout's packages first (an installed copy elsewhere must not be what is measured), and
# the benchmarks folder for ``forecast_scale``'s generator.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecast_scale import START_S, synthetic_rows

from common.ids import ModelId
from forecaster.backtest import run_backtest
from forecaster.sources.trace import read_trace
from forecaster.types import SeriesBatch

HORIZON = 15
DAY = 1440
FAST = ("prewarm", "naive", "seasonal-naive")


def dense_batch(*, models: int = 1000, days: int = 30, seed: int = 0) -> SeriesBatch:
    """``models`` per-minute series over ``days`` (the ``dense`` case)."""
    counts = synthetic_rows(0, models, days * DAY, seed)
    ids = tuple(ModelId(f"model-{index:05d}") for index in range(models))
    return SeriesBatch(models=ids, start_s=START_S, step_s=60.0, counts=counts)


def sparse_requests(
    *, adapters: int = 88, days: int = 24, requests: int = 27_000, seed: int = 0
) -> list[tuple[float, str]]:
    """Per-request ``(timestamp_s, adapter)`` rows of the ``sparse`` case, sorted by time."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, adapters + 1) ** 1.1
    popularity /= popularity.sum()
    mean_session = 4.0
    sessions = int(requests / mean_session)
    owners = rng.choice(adapters, size=sessions, p=popularity)
    # Session starts: uniform days, hours drawn from a daily cycle peaking mid-afternoon.
    day = rng.integers(0, days, size=sessions)
    hour = np.mod(rng.normal(15.0, 4.0, size=sessions), 24.0)
    starts = START_S + day * 86400.0 + hour * 3600.0
    rows: list[tuple[float, str]] = []
    for owner, start in zip(owners, starts, strict=True):
        size = int(rng.geometric(1.0 / mean_session))
        offsets = np.sort(rng.exponential(45.0, size=size).cumsum())
        rows.extend((float(start + offset), f"adapter-{owner:03d}") for offset in offsets)
    rows.sort()
    return rows


def sparse_batch(directory: Path, *, seed: int = 0) -> SeriesBatch:
    """The ``sparse`` case, through the per-request CSV reader (as the CLI reads a trace)."""
    path = directory / "adapters.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write("timestamp,model\n")
        out.writelines(f"{stamp:.3f},{model}\n" for stamp, model in sparse_requests(seed=seed))
    return read_trace(path)


def today_module(revision: str) -> ModuleType:
    """``forecaster/backtest.py`` as of ``revision``, importable next to today's package."""
    source = subprocess.run(
        ["git", "show", f"{revision}:forecaster/backtest.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "backtest_today.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("backtest_today", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def time_new(batch: SeriesBatch, methods: tuple[str, ...], repeats: int) -> dict[str, Any]:
    runs = []
    per_method: dict[str, list[float]] = {}
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run_backtest(batch, horizon_steps=HORIZON, methods=methods)
        runs.append(time.perf_counter() - started)
        for name, seconds in result.seconds.items():
            per_method.setdefault(name, []).append(seconds)
    assert result is not None
    return {
        "seconds_median": statistics.median(runs),
        "seconds_all": runs,
        "origins": int(result.plan.origins.size),
        "per_method_s": {name: statistics.median(s) for name, s in per_method.items()},
        "mase": {name: s.mase for name, s in result.scores.items()},
    }


def _rows(batch: SeriesBatch, count: int) -> SeriesBatch:
    """``count`` of the batch's series, evenly spread (all of them when ``count`` is larger)."""
    if count >= len(batch.models):
        return batch
    rows = np.linspace(0, len(batch.models) - 1, count).astype(int)
    return SeriesBatch(
        models=tuple(batch.models[i] for i in rows),
        start_s=batch.start_s,
        step_s=batch.step_s,
        counts=batch.counts[rows],
    )


def time_today(batch: SeriesBatch, module: ModuleType, series: int) -> dict[str, Any]:
    """Today's ``prewarm`` backtest, whole, on ``series`` of the series (extrapolated linearly
    to all of them when fewer), and the new one on the same slice (a ratio without
    extrapolation)."""
    part = _rows(batch, series)
    started = time.perf_counter()
    old = module.run_backtest(part, horizon_steps=HORIZON, methods=("prewarm",))
    today_s = time.perf_counter() - started
    started = time.perf_counter()
    run_backtest(part, horizon_steps=HORIZON, methods=("prewarm",))
    new_s = time.perf_counter() - started
    return {
        "origins": int(old.plan.origins.size),
        "series": len(part.models),
        "prewarm_s_measured": today_s,
        "new_prewarm_s_same_slice": new_s,
        "same_slice_speedup": today_s / new_s,
        "prewarm_s_extrapolated": today_s * len(batch.models) / len(part.models),
    }


def time_statsmodels(batch: SeriesBatch, series: int) -> dict[str, float]:
    """Seconds per series of the statsmodels baselines, extrapolated to every series."""
    part = _rows(batch, series)
    result = run_backtest(part, horizon_steps=HORIZON, methods=("holt-winters", "ets"))
    scale = len(batch.models) / len(part.models)
    return {f"{name}_s_extrapolated": s * scale for name, s in result.seconds.items()}


def run_case(name: str, batch: SeriesBatch, args: argparse.Namespace) -> dict[str, Any]:
    methods = tuple(args.methods.split(","))
    new = time_new(batch, methods, args.repeats)
    today = time_today(batch, today_module(args.today), args.today_series)
    baselines = time_statsmodels(batch, args.baseline_series)
    new_prewarm = new["per_method_s"]["prewarm"]
    out = {
        "case": name,
        "series": len(batch.models),
        "steps": batch.steps,
        "requests": float(np.nansum(batch.counts)),
        "new": new,
        "today": today,
        "statsmodels_baselines": baselines,
        "prewarm_speedup_vs_today": today["prewarm_s_extrapolated"] / new_prewarm,
    }
    print(
        f"{name}: {len(batch.models)} series x {batch.steps} steps, "
        f"{out['requests']:.0f} requests\n"
        f"  new backtest ({','.join(methods)}, {new['origins']} origins): median "
        f"{new['seconds_median']:.1f}s of {args.repeats} "
        f"({', '.join(f'{s:.1f}' for s in new['seconds_all'])}); prewarm "
        f"{new_prewarm:.1f}s\n"
        f"  today's prewarm ({today['origins']} origins) on {today['series']} series: "
        f"{today['prewarm_s_measured']:.1f}s, new on the same series "
        f"{today['new_prewarm_s_same_slice']:.1f}s ({today['same_slice_speedup']:.1f}x); "
        f"today extrapolated to all series: {today['prewarm_s_extrapolated']:.0f}s "
        f"-> {out['prewarm_speedup_vs_today']:.1f}x faster now\n"
        f"  statsmodels baselines (unchanged, {args.baseline_series} series, extrapolated): "
        + ", ".join(f"{k.split('_')[0]} {v:.0f}s" for k, v in baselines.items())
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--case", choices=("dense", "sparse", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(FAST))
    parser.add_argument("--today", default="55ac331")
    parser.add_argument(
        "--today-series", type=int, default=100, help="Series today's code runs on (then x N/n)."
    )
    parser.add_argument("--baseline-series", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    if args.case in ("sparse", "both"):
        with tempfile.TemporaryDirectory() as directory:
            results.append(run_case("sparse", sparse_batch(Path(directory)), args))
    if args.case in ("dense", "both"):
        results.append(run_case("dense", dense_batch(), args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
