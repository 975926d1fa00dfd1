"""What pre-warming needs from a forecast, measured in backtests: spikes seen early, few false
alarms, the size of the peak.

Owns the definitions (the ``prewarm backtest`` JSON contract, ``prewarm`` key of each method):

- **Spike** (actual): step ``s`` of a series is a spike when its count is at least
  ``SPIKE_FACTOR`` (3) times the series' *trailing level* at ``s``: the median count of the
  ``TRAILING_S`` (1 h, at least one step) before ``s`` (``s`` itself excluded), floored at
  ``LEVEL_FLOOR`` (1 request per step). The floor keeps a series that idles at zero from making
  every lone request a spike: on such a series a spike is a burst of at least 3 requests in a step.
  ``threshold(s) = SPIKE_FACTOR * max(trailing median, LEVEL_FLOOR)``.
- **Forecast spike**: a forecast made at origin ``o`` flags step ``s`` (``o <= s < o + horizon``)
  when its p90 at ``s`` is at least ``threshold(s)``.
- **Lead time** of a forecast at origin ``o`` for step ``s``: ``(s + 1 - o) * step_s``, the time
  from the forecast to the end of the spike step (a forecast of the very next step has one step of
  lead).
- ``spike_recall_{L}``: of the actual spikes covered by at least one origin with lead ``>= L``,
  the share flagged by at least one of those origins; ``None`` when no spike is covered (``L`` in
  ``LEADS_S``: 1, 5, 15 min; a lead longer than the horizon covers nothing).
- ``false_spike_rate``: of the forecast spikes (series, origin, step), the share where the step was
  not an actual spike; ``None`` when nothing was flagged.
- ``peak_error``: per (series, origin) window, the actual 5-minute peak is the largest sum of
  ``PEAK_S`` (5 min, at least one step, at most the horizon) of consecutive actual counts, and the
  forecast's peak the same over the point forecast; the mean of ``|forecast - actual| / actual``
  over windows whose actual peak is > 0 (``None`` when there is none).
- ``spikes``: actual spikes covered by any origin (the recall's largest denominator).

Must not: do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecaster.types import FloatArray

SPIKE_FACTOR = 3.0
TRAILING_S = 3600.0
LEVEL_FLOOR = 1.0
LEADS_S: tuple[float, ...] = (60.0, 300.0, 900.0)
PEAK_S = 300.0


@dataclass(frozen=True, slots=True)
class PrewarmScores:
    """The pre-warming metrics of one method on one trace (see the module docstring)."""

    spike_recall: dict[float, float | None]
    false_spike_rate: float | None
    peak_error: float | None
    spikes: int

    def as_dict(self) -> dict[str, float | int | None]:
        """The JSON form: ``spike_recall_1m`` ... keyed by lead in whole minutes (or seconds)."""
        out: dict[str, float | int | None] = {
            f"spike_recall_{_lead_label(lead)}": value for lead, value in self.spike_recall.items()
        }
        out["false_spike_rate"] = self.false_spike_rate
        out["peak_error"] = self.peak_error
        out["spikes"] = self.spikes
        return out


def _lead_label(lead_s: float) -> str:
    return f"{lead_s / 60:g}m" if lead_s % 60 == 0 else f"{lead_s:g}s"


def spike_thresholds(counts: FloatArray, step_s: float, *, start: int = 0) -> FloatArray:
    """Per series and step from ``start`` on ``(n, T - start)``: the count at or above which the
    step is a spike (only the trailing window before ``start`` is read, not the whole past).

    The first step of a series has no trailing history; its level is the floor. Missing (NaN)
    steps are skipped by the median; a window with no finite value uses the floor.
    """
    window = max(1, round(TRAILING_S / step_s))
    begin = max(0, start - window)
    # pandas' rolling median is a streaming (skip-list) median: O(T log w) per series, where a
    # dense sliding-window median would hold n * T * w values.
    frame = pd.DataFrame(counts[:, begin:].T)
    median = frame.rolling(window, min_periods=1).median().shift(1).to_numpy().T[:, start - begin :]
    level = np.where(np.isfinite(median), np.maximum(median, LEVEL_FLOOR), LEVEL_FLOOR)
    out: FloatArray = SPIKE_FACTOR * level
    return out


def prewarm_scores(
    actual: FloatArray,
    point: FloatArray,
    p90: FloatArray,
    threshold: FloatArray,
    *,
    origins: np.ndarray,
    step_s: float,
) -> PrewarmScores:
    """Metrics of forecasts ``point``/``p90 (n, origins, horizon)`` against ``actual`` and the
    spike ``threshold`` of each step (same shape, see :func:`spike_thresholds`); ``origins`` are
    the origins' step indices (increasing), used to find every forecast of the same step."""
    n, _count, horizon = actual.shape
    valid = np.isfinite(actual)
    is_spike = valid & (actual >= threshold)
    flagged = p90 >= threshold
    lead_steps = np.arange(1, horizon + 1)  # lead of each step ahead, in steps
    # Absolute step index of each (origin, step ahead); spikes are identified by (series, step).
    steps = origins[:, None] + np.arange(horizon)[None, :]
    base = int(steps.min()) if steps.size else 0
    width = int(steps.max()) - base + 1 if steps.size else 0
    spike_step = np.zeros((n, width), dtype=bool)
    rows = np.broadcast_to(np.arange(n)[:, None, None], actual.shape)
    where = np.broadcast_to(steps[None, :, :] - base, actual.shape)
    spike_step[rows[is_spike], where[is_spike]] = True
    recall: dict[float, float | None] = {}
    for lead_s in LEADS_S:
        need = max(1, round(lead_s / step_s))
        far = (lead_steps >= need)[None, None, :]
        covered = np.zeros((n, width), dtype=bool)
        hit = np.zeros((n, width), dtype=bool)
        mask = is_spike & far
        covered[rows[mask], where[mask]] = True
        found = mask & flagged
        hit[rows[found], where[found]] = True
        total = int(covered.sum())
        recall[lead_s] = float(hit.sum() / total) if total else None
    forecast_spikes = int((flagged & valid).sum())
    false = int((flagged & valid & ~is_spike).sum())
    return PrewarmScores(
        spike_recall=recall,
        false_spike_rate=false / forecast_spikes if forecast_spikes else None,
        peak_error=_peak_error(actual, point, step_s),
        spikes=int(spike_step.sum()),
    )


def _peak_error(actual: FloatArray, point: FloatArray, step_s: float) -> float | None:
    horizon = actual.shape[2]
    width = min(horizon, max(1, round(PEAK_S / step_s)))
    filled = np.where(np.isfinite(actual), actual, 0.0)

    def peak(values: FloatArray) -> FloatArray:
        sums = np.cumsum(np.concatenate([np.zeros((*values.shape[:2], 1)), values], axis=2), 2)
        out: FloatArray = (sums[:, :, width:] - sums[:, :, :-width]).max(axis=2)
        return out

    real = peak(filled)
    guess = peak(point)
    usable = real > 0
    if not usable.any():
        return None
    return float(np.mean(np.abs(guess[usable] - real[usable]) / real[usable]))
