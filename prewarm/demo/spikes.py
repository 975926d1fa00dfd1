"""Which spikes the demo shows: each model's largest spike on the trace's last day.

Owns: finding a spike in a per-step series and choosing the demo's spikes and live window.
A *spike* is a run of consecutive steps at or above a threshold, preceded by a step below it, whose
peak is at least ``SPIKE_RATIO`` times the series' median over the day before the run (plus one:
a model that is usually idle spikes on any burst). The threshold is a tenth of the peak, at least
that ratio times the median, so the onset is where traffic leaves its usual level rather than
where it reaches the top. Must not: look at anything but the counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.types import SeriesBatch

DAY_S = 86400.0
SPIKE_RATIO = 8.0
"""A spike's peak against the model's median over the day before it (plus one)."""
LEAD_IN_S = 2.5 * 3600.0
"""How long the live run goes before the first spike shown: time to forecast and preload."""
FOLLOW_S = 3600.0
"""How long the live run goes on after the last spike shown."""
NEIGHBOURHOOD_S = 3 * 3600.0
"""Spikes shown together start within this of the largest one (one readable live window)."""


@dataclass(frozen=True, slots=True)
class Spike:
    """One spike of one model: its first step (``onset``), its last, and its requests."""

    model: ModelId
    row: int
    onset: int
    end: int
    requests: float
    peak: float
    first_step: float
    """Requests in the onset step."""
    baseline: float
    """The model's median count per step over the day before the onset."""


@dataclass(frozen=True, slots=True)
class DemoWindow:
    """The spikes the demo follows and the steps it replays live (``[start, stop)``)."""

    spikes: tuple[Spike, ...]
    start: int
    stop: int


def largest_spike(counts: NDArray[np.float64], *, first: int, day_steps: int) -> tuple[int, int]:
    """``(onset, end)`` of the largest spike (by requests) starting at or after step ``first``;
    ``(-1, -1)`` when there is none. ``counts`` has no NaN."""
    best, best_requests = (-1, -1), 0.0
    step = first
    while step < counts.size:
        baseline = float(np.median(counts[max(0, step - day_steps) : step])) if step else 0.0
        peak_needed = SPIKE_RATIO * (baseline + 1.0)
        if counts[step] < peak_needed or (step > 0 and counts[step - 1] >= peak_needed):
            step += 1
            continue
        end = step
        while end + 1 < counts.size and counts[end + 1] >= peak_needed:
            end += 1
        # Extend backwards to where traffic left its usual level (a tenth of the peak).
        threshold = max(0.1 * float(counts[step : end + 1].max()), SPIKE_RATIO * baseline)
        onset = step
        while onset - 1 >= first and onset - 1 >= 0 and counts[onset - 1] >= max(threshold, 1.0):
            onset -= 1
        requests = float(counts[onset : end + 1].sum())
        if requests > best_requests:
            best, best_requests = (onset, end), requests
        step = end + 1
    return best


def find_spikes(batch: SeriesBatch, *, first: int) -> list[Spike]:
    """Each model's largest spike starting at or after step ``first``, largest first."""
    day_steps = max(1, round(DAY_S / batch.step_s))
    counts = np.nan_to_num(batch.counts)
    found: list[Spike] = []
    for row, model in enumerate(batch.models):
        onset, end = largest_spike(counts[row], first=first, day_steps=day_steps)
        if onset < 0:
            continue
        before = counts[row, max(0, onset - day_steps) : onset]
        found.append(
            Spike(
                model=model,
                row=row,
                onset=onset,
                end=end,
                requests=float(counts[row, onset : end + 1].sum()),
                peak=float(counts[row, onset : end + 1].max()),
                first_step=float(counts[row, onset]),
                baseline=float(np.median(before)) if before.size else 0.0,
            )
        )
    found.sort(key=lambda spike: -spike.requests)
    return found


def choose_window(batch: SeriesBatch, *, count: int) -> DemoWindow:
    """Up to ``count`` of the largest last-day spikes near the largest one, and the live steps
    that show them: from ``LEAD_IN_S`` before the first onset to ``FOLLOW_S`` after the last.

    Raises :class:`InvalidInput` when the trace is shorter than two days (a daily pattern
    needs a day to learn from) or its last day has no spike.
    """
    day_steps = round(DAY_S / batch.step_s)
    if batch.steps < 2 * day_steps:
        raise InvalidInput(
            f"the demo needs at least two days of history to show a daily spike; the trace has "
            f"{batch.steps * batch.step_s / 3600:.1f} h"
        )
    lead_in = round(LEAD_IN_S / batch.step_s)
    first = max(batch.steps - day_steps, day_steps + lead_in)
    spikes = find_spikes(batch, first=first)
    if not spikes:
        raise InvalidInput(
            f"no model of the trace spikes ({SPIKE_RATIO:g}x its usual rate) on its last day"
        )
    anchor = spikes[0].onset
    near = round(NEIGHBOURHOOD_S / batch.step_s)
    chosen = tuple(s for s in spikes if abs(s.onset - anchor) <= near)[:count]
    start = min(s.onset for s in chosen) - lead_in
    stop = min(batch.steps, max(s.onset for s in chosen) + round(FOLLOW_S / batch.step_s) + 1)
    return DemoWindow(spikes=chosen, start=start, stop=stop)
