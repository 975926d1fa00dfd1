"""Which spikes the demo follows: onset where traffic leaves its usual level, largest first."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.types import SeriesBatch
from prewarm.demo.spikes import choose_window, largest_spike

DAY_STEPS = 144  # 10-minute steps


def test_onset_is_where_traffic_leaves_its_usual_level() -> None:
    counts = np.full(3 * DAY_STEPS, 10.0)
    counts[300:305] = [
        150.0,
        400.0,
        1000.0,
        900.0,
        20.0,
    ]  # ramp (over a tenth of the peak), peak, back
    counts[350] = 200.0  # a smaller burst later
    onset, end = largest_spike(counts, first=DAY_STEPS, day_steps=DAY_STEPS)
    assert (onset, end) == (300, 303)


def test_no_spike_in_flat_or_empty_series() -> None:
    assert largest_spike(np.full(400, 50.0), first=144, day_steps=144) == (-1, -1)
    assert largest_spike(np.zeros(400), first=144, day_steps=144) == (-1, -1)


def _batch(days: int) -> SeriesBatch:
    steps = days * DAY_STEPS
    spiky = np.zeros(steps)
    for day in range(days):
        spiky[day * DAY_STEPS + 60 : day * DAY_STEPS + 66] = 500.0  # 10:00 every day
    flat = np.full(steps, 30.0)
    return SeriesBatch(
        models=(ModelId("spiky"), ModelId("flat")),
        start_s=0.0,
        step_s=600.0,
        counts=np.vstack([spiky, flat]),
    )


def test_window_covers_the_last_days_spike_with_a_lead_in() -> None:
    window = choose_window(_batch(3), count=4)
    assert [s.model for s in window.spikes] == ["spiky"]
    onset = window.spikes[0].onset
    assert onset == 2 * DAY_STEPS + 60
    assert window.start == onset - 15  # 2.5 h of 10-minute steps before it
    assert window.stop == onset + 7  # an hour after it, inclusive


def test_short_or_spikeless_traces_are_refused() -> None:
    with pytest.raises(InvalidInput, match="two days"):
        choose_window(_batch(1), count=4)
    flat = _batch(3)
    flat.counts[0] = 30.0
    with pytest.raises(InvalidInput, match="spikes"):
        choose_window(flat, count=4)
