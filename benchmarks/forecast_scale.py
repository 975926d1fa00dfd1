"""Forecaster speed at scale: cycle time, refit time and peak RSS for N models.

Usage: python benchmarks/forecast_scale.py --models N [--json OUT] [--cycles K]

History: 14 days of per-minute, synthetic but realistic request counts for N models (log-uniform
volumes from 0.01 to 500 requests/min with daily and weekly cycles and noise, a share of
intermittent models: timer-driven periodic ones and rare random ones, some level shifts and
bursts). A *cycle* folds in one new minute for every model and forecasts the next 30 minutes at
p50/p90 for every model (``AutoForecaster.observe`` + ``forecast``). The *refit* is the first
forecast on fresh history (rolling-origin warm-up of every candidate on every series plus the
pooled GBM fit); later refits are spread (one per simulated day).

Baseline, measured in the same run: statsmodels' per-series additive Holt-Winters (daily season,
fitted on the last 3 days), the work a per-series tool does each cycle, timed on a subset of series
and extrapolated linearly to N (labelled as such).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import sklearn.ensemble  # noqa: F401  # imported here, outside the timings (slow to import)

from common.ids import ModelId
from forecaster.engine import AutoForecaster
from forecaster.types import SeriesBatch

STEP_S = 60.0
DAY = 1440
START_S = 1_700_006_400.0  # a Wednesday, 00:00 UTC


def synthetic_rows(first: int, count: int, steps: int, seed: int) -> np.ndarray:
    """Counts for models ``first .. first+count-1`` over ``steps`` minutes (float64)."""
    rng = np.random.default_rng(seed + first)
    t = np.arange(steps)
    minute_of_day = (t % DAY) / DAY
    day_index = t // DAY
    weekend = ((day_index + 2) % 7 >= 5).astype(np.float64)
    out = np.empty((count, steps))
    for row in range(count):
        kind = rng.random()
        volume = float(np.exp(rng.uniform(np.log(0.01), np.log(500.0))))
        if kind < 0.15:  # timer-driven: fires every p minutes
            period = int(rng.choice([1, 5, 10, 15, 30, 60]))
            phase = int(rng.integers(0, period))
            out[row] = np.where((t + phase) % period == 0, rng.poisson(max(volume, 1.0), steps), 0)
            continue
        if kind < 0.30:  # rare, random
            out[row] = rng.poisson(volume * 0.02, steps)
            continue
        peak = rng.uniform(0, 1)
        amplitude = rng.uniform(0.2, 0.9)
        shape = 1 + amplitude * np.cos(2 * np.pi * (minute_of_day - peak))
        shape *= 1 - rng.uniform(0, 0.5) * weekend
        rate = volume * shape
        if rng.random() < 0.2:  # a level shift somewhere
            at = int(rng.integers(DAY, steps))
            rate[at:] *= rng.uniform(0.5, 2.0)
        if rng.random() < 0.2:  # a burst
            at = int(rng.integers(0, steps - 60))
            rate[at : at + int(rng.integers(5, 60))] *= rng.uniform(2, 6)
        out[row] = rng.poisson(rate)
    return out


def baseline_per_series(history: np.ndarray, *, horizon: int) -> float:
    """Seconds per series for a statsmodels Holt-Winters refit + forecast (median over rows)."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    timings = []
    for row in history:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ExponentialSmoothing(
                row[-3 * DAY :],
                trend="add",
                seasonal="add",
                seasonal_periods=DAY,
                initialization_method="heuristic",
            ).fit(use_brute=False)
            fit.forecast(horizon)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run(
    models: int, *, cycles: int, days: int, baseline_series: int, seed: int
) -> dict[str, object]:
    steps = days * DAY
    ids = tuple(ModelId(f"model-{index:05d}") for index in range(models))
    engine = AutoForecaster(step_s=STEP_S)
    chunk = 1000
    started = time.perf_counter()
    sample_rows = None
    for first in range(0, models, chunk):
        count = min(chunk, models - first)
        rows = synthetic_rows(first, count, steps + cycles, seed)
        if sample_rows is None:
            sample_rows = rows[:baseline_series, :steps].copy()
        engine.observe(SeriesBatch(ids[first : first + count], START_S, STEP_S, rows[:, :steps]))
        # Keep only the future minutes the cycles will feed.
        future = rows[:, steps:]
        if first == 0:
            tail = np.empty((models, cycles))
        tail[first : first + count] = future
    load_s = time.perf_counter() - started

    levels = (0.5, 0.9)
    horizon = 30
    started = time.perf_counter()
    engine.forecast(horizon_steps=horizon, quantiles=levels)
    refit_s = time.perf_counter() - started

    cycle_s = []
    for index in range(cycles):
        batch = SeriesBatch(
            ids, START_S + (steps + index) * STEP_S, STEP_S, tail[:, index : index + 1]
        )
        started = time.perf_counter()
        engine.observe(batch)
        forecasts = engine.forecast(horizon_steps=horizon, quantiles=levels)
        cycle_s.append(time.perf_counter() - started)
        assert len(forecasts) == models
    started = time.perf_counter()
    engine.refit()
    second_refit_s = time.perf_counter() - started

    assert sample_rows is not None
    per_series = baseline_per_series(sample_rows, horizon=horizon)
    baseline_cycle_s = per_series * models
    median_cycle = statistics.median(cycle_s)
    return {
        "models": models,
        "history_days": days,
        "step_s": STEP_S,
        "horizon_steps": horizon,
        "cycles": cycles,
        "cycle_s_median": median_cycle,
        "cycle_s_all": cycle_s,
        "refit_s_first": refit_s,
        "refit_s_again": second_refit_s,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline": {
            "what": "statsmodels ExponentialSmoothing per series (additive HW, daily season, "
            "3 days), refit + forecast each cycle",
            "measured_series": int(sample_rows.shape[0]),
            "per_series_s_median": per_series,
            "cycle_s_extrapolated": baseline_cycle_s,
        },
        "speedup_vs_baseline": baseline_cycle_s / median_cycle if median_cycle > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, required=True)
    parser.add_argument("--json", type=Path, default=None, help="Also write the result here.")
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--baseline-series", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(
        args.models,
        cycles=args.cycles,
        days=args.days,
        baseline_series=args.baseline_series,
        seed=args.seed,
    )
    gib = result["peak_rss_bytes"] / 2**30  # type: ignore[operator]
    baseline = result["baseline"]
    assert isinstance(baseline, dict)
    print(
        f"models={args.models} history={args.days}d cycle median={result['cycle_s_median']:.2f}s "
        f"refit first={result['refit_s_first']:.1f}s again={result['refit_s_again']:.1f}s "
        f"peak RSS={gib:.2f} GiB\n"
        f"baseline (statsmodels HW per series, {baseline['measured_series']} series measured, "
        f"extrapolated): {baseline['cycle_s_extrapolated']:.1f}s per cycle -> prewarm is "
        f"{result['speedup_vs_baseline']:.0f}x faster"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
