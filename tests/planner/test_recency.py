"""The idle-time record: P(next request within a window | idle for tau)."""

from __future__ import annotations

import numpy as np

from planner.recency import BIN_S, IdleTimeRecord


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


def test_the_records_count_their_gaps() -> None:
    record = _timer(10, 5)
    assert record.gaps().tolist() == [4.0]
