"""The idle-time record: P(next request within a window | idle for tau)."""

from __future__ import annotations

import numpy as np

from common.ids import ModelId
from planner.recency import BIN_S, IdleTimeRecord, ModelIdleRecords


def _timer(period_min: int, repeats: int) -> IdleTimeRecord:
    """One model that had a request every ``period_min`` minutes, ``repeats`` times."""
    record = IdleTimeRecord(1)
    for k in range(repeats):
        record.observe(np.array([True]), end_s=k * period_min * BIN_S)
    return record


def test_a_regular_timer_is_likely_at_its_period_and_not_before() -> None:
    record = _timer(10, 30)
    last = 29 * 10 * BIN_S
    window = np.array([90.0])
    assert record.p_within(last + 2 * BIN_S, window)[0] == 0.0
    assert record.p_within(last + 9 * BIN_S, window)[0] > 0.9


def test_timing_jitter_gives_some_credit_a_minute_early() -> None:
    # Gaps of exactly 10 minutes: a window ending a minute before the usual bin still gets a
    # little probability (the neighbouring-bin share), a window two minutes before gets none.
    record = _timer(10, 30)
    last = 29 * 10 * BIN_S
    window = np.array([60.0])
    one_early = record.p_within(last + 8 * BIN_S, window)[0]
    two_early = record.p_within(last + 7 * BIN_S, window)[0]
    assert 0.05 < one_early < 0.3
    assert two_early == 0.0


def test_no_record_and_long_idle_give_zero() -> None:
    record = IdleTimeRecord(2)
    record.observe(np.array([True, False]), end_s=0.0)
    p = record.p_within(5 * 3600.0, np.array([60.0, 60.0]))
    assert p.tolist() == [0.0, 0.0]


def test_keyed_records_take_series_grow_and_match_the_per_tick_record() -> None:
    # A 10-minute timer fed as one series (with a no-data step) to the keyed record gives the
    # same probabilities as the per-tick record fed tick by tick; new models grow the record.
    counts = np.zeros(300)
    counts[9::10] = 1.0
    counts[5] = np.nan
    keyed = ModelIdleRecords()
    for k in range(12):  # more models than the initial room
        keyed.observe_series(ModelId(f"other-{k}"), np.zeros(3), start_s=0.0, step_s=BIN_S)
    keyed.observe_series(ModelId("timer"), counts[:150], start_s=0.0, step_s=BIN_S)
    keyed.observe_series(ModelId("timer"), counts[150:], start_s=150 * BIN_S, step_s=BIN_S)
    ticked = IdleTimeRecord(1)
    for k, count in enumerate(counts):
        ticked.observe(np.array([count > 0]), end_s=(k + 1) * BIN_S)
    now = 300 * BIN_S + 8 * BIN_S
    got = keyed.p_within(
        now, {ModelId("timer"): 90.0, ModelId("other-0"): 90.0, ModelId("new"): 90.0}
    )
    assert got[ModelId("timer")] == ticked.p_within(now, np.array([90.0]))[0]
    assert got[ModelId("timer")] > 0.75
    assert got[ModelId("other-0")] == 0.0
    assert got[ModelId("new")] == 0.0


def test_a_step_delivered_twice_is_not_a_new_request() -> None:
    once, twice = ModelIdleRecords(), ModelIdleRecords()
    counts = np.zeros(60)
    counts[::10] = 1.0
    once.observe_series(ModelId("m"), counts, start_s=0.0, step_s=BIN_S)
    twice.observe_series(ModelId("m"), counts[:35], start_s=0.0, step_s=BIN_S)
    twice.observe_series(ModelId("m"), counts[30:], start_s=30 * BIN_S, step_s=BIN_S)
    for tau in (2, 8, 9):
        now = 51 * BIN_S + tau * BIN_S
        assert once.p_within(now, {ModelId("m"): 90.0}) == twice.p_within(now, {ModelId("m"): 90.0})


def test_the_last_request_is_the_end_of_the_last_step_with_one() -> None:
    records = ModelIdleRecords()
    model = ModelId("m")
    assert records.last_request_s(model) is None
    records.observe_series(model, np.array([1.0, 0.0, 2.0, 0.0]), start_s=600.0, step_s=60.0)
    assert records.last_request_s(model) == 600.0 + 3 * 60.0
    records.observe_series(ModelId("quiet"), np.zeros(3), start_s=0.0, step_s=60.0)
    assert records.last_request_s(ModelId("quiet")) is None


def test_the_records_count_their_gaps() -> None:
    record = _timer(10, 5)
    assert record.gaps().tolist() == [4.0]
    records = ModelIdleRecords()
    model = ModelId("m")
    assert records.gaps(model) == 0
    records.observe_series(model, np.array([1.0, 0.0, 2.0, 1.0]), start_s=0.0, step_s=60.0)
    assert records.gaps(model) == 2
