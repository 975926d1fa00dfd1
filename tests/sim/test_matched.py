"""The matched-memory verdict (prewarm.sim.matched): interpolation on a baseline's curve, the
frontier it is read from, and the verdict's outcomes and words."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prewarm.sim.matched import (
    TARGETS,
    CurvePoint,
    at_idle,
    frontier,
    verdict,
    verdict_json,
    verdict_line,
)


def _p(label: str, cold: float, idle: float, wait: float = 0.0) -> CurvePoint:
    return CurvePoint(label, {}, cold, idle, wait_p99_s=wait)


KEEPALIVE = [
    _p("keep 5 min", 0.00478, 47_679.0, 11.5),
    _p("keep 10 min", 0.00163, 55_368.0, 5.2),
    _p("keep 20 min", 0.00090, 61_000.0, 3.0),
]


def test_linear_in_idle_memory_between_the_neighbouring_points() -> None:
    matched = at_idle(KEEPALIVE, 51_523.5)  # halfway between 5 and 10 minutes
    assert matched is not None
    assert matched.cold_start_ratio == pytest.approx((0.00478 + 0.00163) / 2)
    assert matched.wait_p99_s == pytest.approx((11.5 + 5.2) / 2)
    assert (matched.low.label, matched.high.label) == ("keep 5 min", "keep 10 min")


def test_exact_at_sweep_points_and_none_beyond_the_curve() -> None:
    for point in KEEPALIVE:
        matched = at_idle(KEEPALIVE, point.idle_gpu_gb_hours)
        assert matched is not None
        assert matched.cold_start_ratio == point.cold_start_ratio
        assert matched.low is matched.high is point
    assert at_idle(KEEPALIVE, 47_678.9) is None
    assert at_idle(KEEPALIVE, 61_000.1) is None
    assert at_idle([], 1.0) is None
    assert at_idle(KEEPALIVE, math.nan) is None


def test_points_beaten_on_both_axes_are_not_on_the_curve() -> None:
    beaten = _p("p10/p90", 0.002, 58_000.0)  # more memory than keep 10 min and more cold starts
    same_memory = _p("other", 0.005, 47_679.0)
    curve = frontier([*KEEPALIVE, beaten, same_memory])
    assert [p.label for p in curve] == ["keep 5 min", "keep 10 min", "keep 20 min"]
    # All without cold starts: only the leanest counts; more memory bought nothing.
    flat = frontier([_p("a", 0.0, 9.5), _p("b", 0.0, 9.2), _p("c", 0.0, 9.8)])
    assert [p.label for p in flat] == ["b"]


curves = st.lists(
    st.builds(
        _p,
        st.just("p"),
        st.floats(0.0, 1.0),
        st.floats(0.0, 1e6),
        st.floats(0.0, 1e4),
    ),
    min_size=1,
    max_size=8,
)


@given(curves, st.floats(0.0, 1e6), st.floats(0.0, 1e6))
def test_interpolation_is_monotone_in_idle_memory(
    points: list[CurvePoint], x1: float, x2: float
) -> None:
    low, high = sorted((x1, x2))
    a, b = at_idle(points, low), at_idle(points, high)
    if a is not None and b is not None:
        assert a.cold_start_ratio >= b.cold_start_ratio


@given(curves, st.floats(0.0, 1e6))
def test_interpolation_stays_between_its_neighbours(points: list[CurvePoint], x: float) -> None:
    matched = at_idle(points, x)
    edge = frontier(points)
    inside = edge[0].idle_gpu_gb_hours <= x <= edge[-1].idle_gpu_gb_hours
    assert (matched is not None) == inside
    if matched is not None:
        ends = (matched.low.cold_start_ratio, matched.high.cold_start_ratio)
        assert min(ends) <= matched.cold_start_ratio <= max(ends)
        assert matched.low.idle_gpu_gb_hours <= x <= matched.high.idle_gpu_gb_hours


@given(curves)
def test_exact_at_the_curve_and_never_above_any_point(points: list[CurvePoint]) -> None:
    edge = frontier(points)
    for point in edge:
        matched = at_idle(points, point.idle_gpu_gb_hours)
        assert matched is not None
        assert matched.cold_start_ratio == point.cold_start_ratio
    # A point off the frontier is beaten by one on it: the curve never reads above a point.
    for point in points:
        matched = at_idle(points, point.idle_gpu_gb_hours)
        if matched is not None:
            assert matched.cold_start_ratio <= point.cold_start_ratio


@given(curves, st.floats(0.0, 1e6), st.randoms())
def test_the_order_of_the_sweep_does_not_matter(
    points: list[CurvePoint], x: float, rng: random.Random
) -> None:
    shuffled = list(points)
    rng.shuffle(shuffled)
    a, b = at_idle(points, x), at_idle(shuffled, x)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.cold_start_ratio == b.cold_start_ratio


def test_verdict_outcomes() -> None:
    share = TARGETS["keepalive-10m"]
    # At 54,882 GB-hours keepalive reads 0.00163 + (0.00478 - 0.00163) x 486 / 7,689 = 0.00183.
    ours = CurvePoint("idle_price 0.0004", {"idle_price": 0.0004}, 0.000196, 54_882.0)
    v = verdict("keepalive-10m", ours, curve=KEEPALIVE, share=share)
    assert v.outcome == "meets"
    assert v.matched is not None
    assert v.matched.cold_start_ratio == pytest.approx(0.00183, rel=0.01)
    assert v.cold_ratio == pytest.approx(0.000196 / 0.00183, rel=0.01)
    # Half of hybrid-histogram's: 0.52x misses, 0.5x meets.
    curve = [_p("a", 0.000376, 50_000.0), _p("b", 0.000376 / 2, 60_000.0)]
    half = 0.000376 / 2 + 0.000376 / 4  # matched at 55,000 GB-hours: 0.000282
    assert verdict("h", _p("x", 0.52 * half, 55_000.0), curve=curve, share=0.5).outcome == "misses"
    assert verdict("h", _p("x", 0.5 * half, 55_000.0), curve=curve, share=0.5).outcome == "meets"
    # Equal is not less.
    assert verdict("k", _p("x", half, 55_000.0), curve=curve, share=1.0).outcome == "misses"
    zero = [_p("a", 0.0, 9.431)]
    assert verdict("k", _p("x", 0.0, 9.431), curve=zero, share=1.0).outcome == "tie"
    beyond = verdict("k", _p("x", 0.0, 9.433), curve=zero, share=1.0)
    assert (beyond.outcome, beyond.side, beyond.matched, beyond.cold_ratio) == (
        "beyond the curve",
        "more",
        None,
        None,
    )
    lean = verdict("k", _p("x", 0.1, 40_000.0), curve=KEEPALIVE, share=1.0)
    assert (lean.outcome, lean.side) == ("beyond the curve", "less")


def test_verdict_lines_and_json() -> None:
    ours = CurvePoint(
        "idle_price 0.0004",
        {"idle_price": 0.0004},
        0.000196,
        51_523.5,
        wait_p99_s=1_155.0,
        cold_wait_p99_s=0.0,
        queue_wait_p99_s=1_155.0,
    )
    line = verdict_line(verdict("keepalive-10m", ours, curve=KEEPALIVE, share=1.0))
    assert line == (
        "prewarm vs keepalive-10m at 51,524 idle GB-hours: 0.06x its cold-start ratio (0.000196 vs "
        "0.00321, between keep 5 min and keep 10 min); target < 1x: meets; "
        "wait p99 1,155 s (cold 0 s, queue 1,155 s) vs 8.35 s"
    )
    lean = verdict("tyche", _p("x", 0.1, 40_000.0), curve=KEEPALIVE, share=1.0)
    assert verdict_line(lean) == (
        "prewarm vs tyche at 40,000 idle GB-hours: beyond the curve (every setting holds more; "
        "the leanest, keep 5 min, holds 47,679 at a cold-start ratio of 0.00478); "
        "prewarm's cold-start ratio 0.1, wait p99 0 s (cold 0 s, queue 0 s)"
    )
    none = verdict("tyche", _p("x", 0.1, 50_000.0), curve=[_p("a", 0.0, 50_000.0)], share=1.0)
    assert "where tyche has none" in verdict_line(none)
    document = json.loads(json.dumps([verdict_json(lean), verdict_json(none)], allow_nan=False))
    assert document[0]["baseline_at_same_idle"] is None
    assert document[0]["verdict"] == "beyond the curve"
    assert document[1]["cold_start_ratio_vs_baseline"] is None
    assert document[1]["baseline_at_same_idle"]["between"] == ["a", "a"]
