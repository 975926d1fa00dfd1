"""The cycle's traffic records: rates, idle-time evidence and silences from history batches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.ids import ModelId
from forecaster.types import SeriesBatch
from planner.recency import BIN_S, PRIOR_EXPOSURE_S, IdleTimeRecord
from prewarm.cycle.traffic import TrafficRecord, joined

TIMER = ModelId("timer")


def _batch(models: dict[str, np.ndarray], *, start_s: float, step_s: float = BIN_S) -> SeriesBatch:
    return SeriesBatch(
        models=tuple(ModelId(m) for m in models),
        start_s=start_s,
        step_s=step_s,
        counts=np.vstack(list(models.values())),
    )


def _p(record: TrafficRecord, model: ModelId, now_s: float, window_s: float = 90.0) -> float:
    return float(record.state_of([model], [window_s], now_s=now_s).p_observed[0])


def test_batches_grow_the_record_and_match_the_per_tick_record() -> None:
    # A 10-minute timer fed in two batches (with a no-data step), after more models than the
    # record's initial room, gives the same probabilities as the per-tick record.
    counts = np.zeros(300)
    counts[9::10] = 1.0
    counts[5] = np.nan
    record = TrafficRecord()
    others = {f"other-{k}": np.zeros(3) for k in range(12)}
    record.observe(_batch(others, start_s=0.0))
    record.observe(_batch({"timer": counts[:150]}, start_s=0.0))
    record.observe(_batch({"timer": counts[150:]}, start_s=150 * BIN_S))
    ticked = IdleTimeRecord(1)
    for k, count in enumerate(counts):
        ticked.observe(np.array([count > 0]), end_s=(k + 1) * BIN_S)
    now = 300 * BIN_S + 8 * BIN_S
    assert _p(record, TIMER, now) == ticked.p_within(now, np.array([90.0]))[0]
    assert _p(record, TIMER, now) > 0.75
    assert _p(record, ModelId("other-0"), now) == 0.0
    assert _p(record, ModelId("new"), now) == 0.0


def test_a_step_delivered_twice_is_not_a_new_request() -> None:
    once, twice = TrafficRecord(), TrafficRecord()
    counts = np.zeros(60)
    counts[::10] = 1.0
    once.observe(_batch({"m": counts}, start_s=0.0))
    twice.observe(_batch({"m": counts[:35]}, start_s=0.0))
    twice.observe(_batch({"m": counts[30:]}, start_s=30 * BIN_S))
    for tau in (2, 8, 9):
        now = 51 * BIN_S + tau * BIN_S
        assert _p(once, ModelId("m"), now) == _p(twice, ModelId("m"), now)


def test_rates_last_request_gaps_and_silences() -> None:
    record = TrafficRecord()
    model = ModelId("m")
    assert record.observed_rps(model) is None
    record.observe(
        _batch({"m": np.array([1.0, 0.0, 2.0, 0.0, np.nan])}, start_s=600.0, step_s=60.0)
    )
    state = record.state_of([model, ModelId("quiet")], [60.0, 60.0], now_s=900.0)
    assert state.last_request_s.tolist() == [600.0 + 3 * 60.0, -math.inf]
    assert state.observed_rps.tolist() == [0.0, 0.0]  # the last step with data had none
    assert state.active_rps[0] == 1.5 / 60.0  # 3 requests over 2 active steps
    assert state.idle_gaps.tolist() == [1, 0]
    assert record.take_latest() == ()  # the latest step with data had no requests
    record.observe(_batch({"m": np.array([4.0])}, start_s=900.0, step_s=60.0))
    (latest,) = record.take_latest()
    assert (latest.model, latest.requests) == (model, 4.0)
    assert latest.silence_before_s == 900.0 - 720.0 - 60.0
    assert record.take_latest() == ()  # counted once
    assert record.observed_rps(model) == 4.0 / 60.0


def test_a_model_first_seen_later_still_gets_its_earlier_steps() -> None:
    record = TrafficRecord()
    record.observe(_batch({"a": np.ones(10)}, start_s=0.0))
    record.observe(_batch({"a": np.ones(10), "b": np.r_[np.zeros(9), 1.0]}, start_s=0.0))
    state = record.state_of([ModelId("a"), ModelId("b")], [60.0, 60.0], now_s=600.0)
    assert state.idle_gaps.tolist() == [9, 0]
    assert state.last_request_s.tolist() == [600.0, 600.0]


def test_joined_batches_cover_both_with_gaps_missing() -> None:
    first = _batch({"a": np.array([1.0, 2.0])}, start_s=0.0)
    later = _batch({"b": np.array([3.0])}, start_s=3 * BIN_S)
    both = joined(first, later)
    assert both is not None
    assert both.models == (ModelId("a"), ModelId("b"))
    assert both.start_s == 0.0
    assert np.array_equal(
        both.counts,
        np.array([[1.0, 2.0, np.nan, np.nan], [np.nan, np.nan, np.nan, 3.0]]),
        equal_nan=True,
    )
    assert joined(None, later) is later
    assert joined(first, None) is first


def test_the_base_rate_counts_returns_from_silence_on_any_step_width() -> None:
    # 10-minute steps: two busy steps in a row are one stretch of activity, not a return, and
    # only silent steps count as idle time. Past the 4-hour histogram, P is the base rate.
    counts = np.zeros(40)
    counts[[0, 1, 6, 12, 13]] = 1.0
    record = TrafficRecord()
    record.observe(_batch({"m": counts}, start_s=0.0, step_s=600.0))
    now = 40 * 600.0  # 26 silent steps since the last request: past the histogram
    returns, idle_s = 2.0, (4 + 5 + 26) * 600.0
    rate = (returns + 1.0) / (idle_s + PRIOR_EXPOSURE_S)
    assert _p(record, ModelId("m"), now, window_s=600.0) == pytest.approx(
        1.0 - math.exp(-rate * 600.0)
    )
