"""Forecaster speed at scale: the daemon's cycle time and peak RSS for N models.

Usage: python benchmarks/forecast_scale.py --models N [--runs 3] [--baseline-commit REV]
           [--baseline-models 10000] [--json OUT]

What is measured is what the daemon runs each tick, built as ``prewarm run`` builds it: an
``AutoForecaster`` with the forecaster settings' defaults (step, history window, planning
quantile), driven through the cycle's ``ForecastFeed`` (``prewarm.cycle.forecasting``) at the
settings' horizon and quantile levels, then the decision cycle itself (``prewarm.cycle.step``:
quality gate, planner, budget caps) on an empty cluster with the default catalog. A *cycle*
folds one new step into every model and forecasts (``forecast`` s), then plans (``plan`` s);
``cycle`` is their sum. 7 cycles per run, medians quoted; with ``--runs R`` each run is a fresh
process (its own peak RSS) and the figures are medians over runs.

History: ``--days`` (default 14, the daemon's history window) of per-minute synthetic request
counts for N models: log-uniform volumes 0.01-500 requests/min with daily and weekly cycles and
noise, timer-driven periodic and rare random intermittent models, level shifts and bursts. Rows
are drawn 1,000 models at a time (vectorised; a row-by-row draw took minutes at 100,000 models).
The history is loaded with ``observe`` 1,000 models at a time (as a chunked backfill does) and
is not timed; the *first call* (the first ``forecast`` on fresh history: the pooled GBM fit and
the first slice of the rolling-origin warm-up) is reported on its own. Every measured cycle at
this scale still carries one warm-up origin (the refit's slices end after 48 calls), so these
cycle times are above the steady state.

Baseline, measured in the same run: the same benchmark (same data, same cycle) on the tree of
``--baseline-commit`` (extracted with ``git archive``) at ``--baseline-models`` models, its runs
alternating with this tree's (both see the same shifts in machine load), and the
ratio of its medians to this tree's at that size. (The tree before this work held every model's
14 days as float32, 8.1 GB at 100,000 models, so it is measured where it fits.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __name__ == "__main__":
    # The tree under test: --tree (a baseline's extracted tree), else this checkout.
    _tree = Path(__file__).resolve().parents[1]
    if "--tree" in sys.argv:
        _tree = Path(sys.argv[sys.argv.index("--tree") + 1])
    sys.path.insert(0, str(_tree))

import sklearn.ensemble  # noqa: F401  # imported here, outside the timings (slow to import)

from common.ids import ModelId
from forecaster.config import ForecasterConfig
from forecaster.engine import AutoForecaster
from forecaster.types import SeriesBatch

DAY = 1440
START_S = 1_700_006_400.0  # a Wednesday, 00:00 UTC
CHUNK = 1000


def synthetic_rows(first: int, count: int, steps: int, seed: int) -> np.ndarray:
    """Counts for models ``first .. first+count-1`` over ``steps`` minutes (float64)."""
    rng = np.random.default_rng(seed + first)
    t = np.arange(steps)
    minute_of_day = (t % DAY) / DAY
    weekend = (((t // DAY) + 2) % 7 >= 5).astype(np.float64)
    kind = rng.random(count)
    volume = np.exp(rng.uniform(np.log(0.01), np.log(500.0), count))
    period = rng.choice([1, 5, 10, 15, 30, 60], count)
    phase = rng.integers(0, 60, count) % period
    peak = rng.uniform(0, 1, count)
    amplitude = rng.uniform(0.2, 0.9, count)
    weekend_dip = rng.uniform(0, 0.5, count)
    shift_at = np.where(rng.random(count) < 0.2, rng.integers(DAY, steps, count), steps)
    shift = rng.uniform(0.5, 2.0, count)
    burst_at = np.where(rng.random(count) < 0.2, rng.integers(0, steps - 60, count), steps)
    burst_len = rng.integers(5, 60, count)
    burst = rng.uniform(2, 6, count)
    rate = volume[:, None] * (
        1 + amplitude[:, None] * np.cos(2 * np.pi * (minute_of_day[None, :] - peak[:, None]))
    )
    rate *= 1 - weekend_dip[:, None] * weekend[None, :]
    rate *= np.where(t[None, :] >= shift_at[:, None], shift[:, None], 1.0)
    in_burst = (t[None, :] >= burst_at[:, None]) & (t[None, :] < (burst_at + burst_len)[:, None])
    rate *= np.where(in_burst, burst[:, None], 1.0)
    timer = kind < 0.15  # timer-driven: fires every `period` minutes
    fires = (t[None, :] + phase[:, None]) % period[:, None] == 0
    rate = np.where(timer[:, None], np.where(fires, np.maximum(volume, 1.0)[:, None], 0.0), rate)
    rare = (kind >= 0.15) & (kind < 0.30)  # rare, random
    rate = np.where(rare[:, None], (volume * 0.02)[:, None], rate)
    out: np.ndarray = rng.poisson(rate).astype(np.float64)
    return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_once(models: int, *, cycles: int, days: int, seed: int) -> dict[str, Any]:
    """One run in this process: load, first call, ``cycles`` measured cycles."""
    # The daemon's own parts, built as prewarm.daemon.app.build_runtime builds them.
    from planner.catalog import Catalog
    from planner.config import PlannerConfig
    from planner.observed import ClusterSnapshot
    from prewarm.cycle.config import CycleConfig
    from prewarm.cycle.forecasting import ForecastFeed
    from prewarm.cycle.step import CycleInputs, CycleState, step
    from prewarm.daemon.config import DaemonConfig

    settings = ForecasterConfig()
    step_s = float(settings.prometheus.step_s)
    engine = AutoForecaster(
        step_s,
        history_window_s=settings.history_window_s,
        planning_quantile=settings.planning_quantile,
    )
    feed = ForecastFeed(
        engine,
        step_s=step_s,
        horizon_s=settings.horizon_s,
        planning_quantile=settings.planning_quantile,
    )
    cycle_config = CycleConfig(
        planner=PlannerConfig(),
        catalog=Catalog(),
        interval_s=DaemonConfig().tick_s,
        step_s=step_s,
        planning_quantile=settings.planning_quantile,
    )
    state = CycleState.initial(cycle_config)
    snapshot = ClusterSnapshot(models={}, pools={})

    steps = days * DAY
    ids = tuple(ModelId(f"model-{index:06d}") for index in range(models))
    tail = np.empty((models, cycles))
    started = time.perf_counter()
    for first in range(0, models, CHUNK):
        count = min(CHUNK, models - first)
        rows = synthetic_rows(first, count, steps + cycles, seed)
        engine.observe(SeriesBatch(ids[first : first + count], START_S, step_s, rows[:, :steps]))
        tail[first : first + count] = rows[:, steps:]  # the minutes the cycles will feed
        del rows
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    feed.refresh(None)
    first_s = time.perf_counter() - started

    forecast_s, plan_s = [], []
    for index in range(cycles):
        now_s = START_S + (steps + index + 1) * step_s
        batch = SeriesBatch(ids, now_s - step_s, step_s, tail[:, index : index + 1])
        started = time.perf_counter()
        forecasts = feed.refresh(batch)
        forecast_s.append(time.perf_counter() - started)
        assert len(forecasts) == models
        started = time.perf_counter()
        result = step(
            CycleInputs(now_s=now_s, forecasts=forecasts, snapshot=snapshot, history=batch),
            state,
            cycle_config,
        )
        state = result.state
        plan_s.append(time.perf_counter() - started)
    cycle_s = [f + p for f, p in zip(forecast_s, plan_s, strict=True)]
    return {
        "models": models,
        "history_days": days,
        "step_s": step_s,
        "horizon_steps": feed.horizon_steps,
        "quantiles": list(feed.quantiles),
        "cycles": cycles,
        "cycle_s_median": statistics.median(cycle_s),
        "forecast_s_median": statistics.median(forecast_s),
        "plan_s_median": statistics.median(plan_s),
        "cycle_s_all": cycle_s,
        "forecast_s_all": forecast_s,
        "plan_s_all": plan_s,
        "first_call_s": first_s,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss_bytes(),
        # How the history is stored (trees before the narrow rows have neither).
        "history_bytes": getattr(engine.history, "nbytes", lambda: None)(),
        "history_tiers": getattr(engine.history, "tier_counts", lambda: None)(),
    }


def run_process(
    models: int, *, cycles: int, days: int, seed: int, tree: Path | None = None
) -> dict[str, Any]:
    """One run in a fresh process of this script (on ``tree``, else this checkout)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--models", str(models)]
        command += ["--cycles", str(cycles), "--days", str(days), "--seed", str(seed)]
        command += ["--once", str(out)]
        if tree is not None:
            command += ["--tree", str(tree)]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result


def summarise(models: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs."""
    summary: dict[str, Any] = {"models": models, "runs": results}
    for key in ("cycle_s_median", "forecast_s_median", "plan_s_median", "first_call_s"):
        summary[key] = statistics.median(r[key] for r in results)
    summary["peak_rss_bytes"] = statistics.median(r["peak_rss_bytes"] for r in results)
    summary["peak_rss_bytes_max"] = max(r["peak_rss_bytes"] for r in results)
    return summary


def extract_tree(commit: str, into: Path) -> Path:
    """The packages of ``commit`` (and this script's data, unchanged) in ``into``."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", commit, "common", "forecaster", "planner", "prewarm"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def describe(label: str, summary: dict[str, Any]) -> str:
    gib = summary["peak_rss_bytes"] / 2**30
    cycles = ", ".join(f"{r['cycle_s_median']:.2f}" for r in summary["runs"])
    return (
        f"{label}: models={summary['models']} cycle median={summary['cycle_s_median']:.2f}s "
        f"(forecast {summary['forecast_s_median']:.2f}s + plan {summary['plan_s_median']:.2f}s; "
        f"per run {cycles}) first call={summary['first_call_s']:.1f}s "
        f"peak RSS={gib:.2f} GiB (max {summary['peak_rss_bytes_max'] / 2**30:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=int, required=True)
    parser.add_argument("--json", type=Path, default=None, help="Also write the result here.")
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-commit", default=None, help="e.g. 55ac331 (before this work)")
    parser.add_argument("--baseline-models", type=int, default=10_000)
    parser.add_argument("--once", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once is not None:  # one run, in this process (the parent collects it)
        result = run_once(args.models, cycles=args.cycles, days=args.days, seed=args.seed)
        args.once.write_text(json.dumps(result) + "\n", encoding="utf-8")
        return
    shape = {"cycles": args.cycles, "days": args.days, "seed": args.seed}
    runs = range(args.runs)
    report: dict[str, Any] = {}
    if args.baseline_commit is not None:
        size = args.baseline_models
        with tempfile.TemporaryDirectory() as scratch:
            tree = extract_tree(args.baseline_commit, Path(scratch))
            # Alternating runs of the two trees: both see the same shifts in machine load.
            pairs = [
                (run_process(size, tree=tree, **shape), run_process(size, **shape)) for _ in runs
            ]
        before = summarise(size, [b for b, _ in pairs])
        after = summarise(size, [a for _, a in pairs])
        report["baseline"] = {"commit": args.baseline_commit, "before": before, "after": after}
        print(describe(f"{args.baseline_commit}", before))
        print(describe("this tree", after))
        speedup = before["cycle_s_median"] / after["cycle_s_median"]
        forecast = before["forecast_s_median"] / after["forecast_s_median"]
        print(
            f"at {size} models, same run: cycle {before['cycle_s_median']:.2f}s -> "
            f"{after['cycle_s_median']:.2f}s ({speedup:.2f}x faster; forecast {forecast:.2f}x), "
            f"peak RSS {before['peak_rss_bytes'] / 2**30:.2f} -> "
            f"{after['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"({before['peak_rss_bytes'] / after['peak_rss_bytes']:.2f}x less)",
            flush=True,
        )
    if args.baseline_commit is None or args.models != args.baseline_models:
        report["measured"] = summarise(
            args.models, [run_process(args.models, **shape) for _ in runs]
        )
    else:
        report["measured"] = report["baseline"]["after"]
    print(describe("this tree", report["measured"]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
