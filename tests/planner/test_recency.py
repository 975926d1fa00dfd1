"""The idle-time record: P(next request within a window | idle for tau)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.recency import BIN_S, PRIOR_EXPOSURE_S, IdleTimeRecord


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
    # Two minutes in, no gap of 29 ever ended there: only the base rate, shrunk by 29 gaps.
    assert 0.0 < record.p_within(last + 2 * BIN_S, window)[0] < 0.01
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
    assert two_early < 0.01


def test_no_record_gives_zero_and_one_request_the_prior_rate() -> None:
    record = IdleTimeRecord(2)
    record.observe(np.array([True, False]), end_s=0.0)
    idle_s = 5 * 3600.0
    p = record.p_within(idle_s, np.array([60.0, 60.0]))
    # One request, no return yet: the prior's one return per PRIOR_EXPOSURE_S, diluted by the
    # five idle hours since.
    assert p[0] == pytest.approx(1.0 - math.exp(-60.0 / (idle_s + PRIOR_EXPOSURE_S)))
    assert p[1] == 0.0


def test_beyond_the_histogram_a_model_keeps_its_lifetime_rate() -> None:
    # Requests every 30 minutes for 8 hours (16 returns, 8 hours idle between them, less the
    # active minutes), then silence for 5 hours: past the 4-hour range the record has no timing
    # evidence, and P is the Poisson chance at the rate it has returned from idleness.
    record = _timer(30, 17)
    last = 16 * 30 * BIN_S
    now = last + 5 * 3600.0
    window = 90.0
    idle = 16 * 29 * BIN_S + 5 * 3600.0
    expected = 1.0 - math.exp(-window * 17 / (idle + PRIOR_EXPOSURE_S))
    assert record.base_rate(now)[0] == pytest.approx(17 / (idle + PRIOR_EXPOSURE_S))
    assert record.p_within(now, np.array([window]))[0] == pytest.approx(expected)


def test_a_busier_model_idle_as_long_ranks_higher() -> None:
    # Same idle time past every gap either has shown: the one that returned more often per idle
    # hour is the likelier to return now (with P = 0 for both, the ranking was a coin toss).
    busy, rare = _timer(20, 13), _timer(60, 5)
    now = 5 * 3600.0 + 240 * BIN_S
    window = np.array([90.0])
    assert busy.p_within(now, window)[0] > rare.p_within(now, window)[0] > 0.0


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=400), min_size=0, max_size=20),
    idle_min=st.floats(min_value=0.0, max_value=2000.0),
    window_s=st.floats(min_value=1.0, max_value=3600.0),
)
def test_p_is_a_probability_and_never_zero_with_history(
    gaps: list[int], idle_min: float, window_s: float
) -> None:
    record = IdleTimeRecord(1)
    end = 0.0
    record.observe(np.array([True]), end_s=end)
    for gap in gaps:
        end += gap * BIN_S
        record.observe(np.array([True]), end_s=end)
    p = record.p_within(end + idle_min * BIN_S, np.array([window_s]))[0]
    assert 0.0 < p <= 1.0


def test_consecutive_intervals_are_one_return_and_resizing_keeps_the_record() -> None:
    record = IdleTimeRecord(1)
    for end in (60.0, 120.0, 180.0, 900.0, 960.0):
        record.observe(np.array([True]), end_s=end, start_s=end - 60.0)
    assert record.returns.tolist() == [1.0]
    assert record.idle_s.tolist() == [900.0 - 60.0 - 180.0]
    grown = record.resized(3)
    assert grown.returns.tolist() == [1.0, 0.0, 0.0]
    assert grown.idle_s[0] == record.idle_s[0]
    assert grown.hist[0].tolist() == record.hist[0].tolist()
    assert grown.last_s[0] == 960.0
    assert np.isneginf(grown.last_s[1:]).all()


def test_the_records_count_their_gaps() -> None:
    record = _timer(10, 5)
    assert record.gaps().tolist() == [4.0]
