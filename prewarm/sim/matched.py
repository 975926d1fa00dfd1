"""prewarm against a baseline at matched memory: the verdict of ``prewarm bench --sweep`` and of
``benchmarks/bench_traces.py``.

Comparing one operating point per policy rewards whichever policy holds less memory by making its
requests wait more. Here a baseline is a *curve*: the points of its sweep (one per setting of its
knob: cold-start ratio, idle GPU GB-hours, wait p99). prewarm's cold-start ratio is set against
the baseline's at prewarm's own idle GB-hours, read off that curve:

- the curve is the sweep's lower-left frontier: a point another point beats on both axes (no more
  cold starts with no more idle memory) is a setting nobody would pick, and leaving it out can
  only make the baseline stronger;
- between the two frontier points that neighbour prewarm's idle GB-hours, the cold-start ratio
  (and the wait p99 printed beside it) is linear in idle GB-hours; at a sweep point it is that
  point's own;
- outside the frontier's range there is no matched value: prewarm holds less idle memory than
  every setting of the baseline, or more than its setting with the fewest cold starts. The verdict
  then says "beyond the curve" and gives no ratio.

Pure: summaries in, verdicts out. No simulation, no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TARGETS: Mapping[str, float] = {"keepalive-10m": 1.0, "hybrid-histogram": 0.5, "tyche": 1.0}
"""Baseline -> the largest share of its cold-start ratio prewarm may have at the same idle GPU
memory (issue 3's targets: half of hybrid-histogram's; less than keepalive's and Tyche's)."""


CURVE_COLUMNS = (
    "policy",
    "setting",
    "cold_start_ratio",
    "idle_gpu_gb_hours",
    "wait_p99_s",
    "cold_wait_p99_s",
    "queue_wait_p99_s",
)
"""The columns of a table of sweep curves (one row per policy and setting)."""


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One run of a policy at one setting: what the matched-memory verdict reads."""

    label: str
    params: Mapping[str, float]
    cold_start_ratio: float
    idle_gpu_gb_hours: float
    wait_p99_s: float = 0.0
    cold_wait_p99_s: float = 0.0
    queue_wait_p99_s: float = 0.0

    @classmethod
    def from_summary(
        cls, summary: Mapping[str, float], *, label: str, params: Mapping[str, float]
    ) -> CurvePoint:
        """The point of a run's summary (``SimResult.summary()``'s keys)."""
        return cls(
            label=label,
            params=dict(params),
            cold_start_ratio=summary["cold_start_ratio"],
            idle_gpu_gb_hours=summary["idle_gpu_gb_hours"],
            wait_p99_s=summary["wait_p99_s"],
            cold_wait_p99_s=summary["cold_wait_p99_s"],
            queue_wait_p99_s=summary["queue_wait_p99_s"],
        )

    def to_json(self) -> dict[str, object]:
        """The point as the bench's JSON carries it."""
        return {
            "setting": self.label,
            "params": dict(self.params),
            "cold_start_ratio": self.cold_start_ratio,
            "idle_gpu_gb_hours": self.idle_gpu_gb_hours,
            "wait_p99_s": self.wait_p99_s,
            "cold_wait_p99_s": self.cold_wait_p99_s,
            "queue_wait_p99_s": self.queue_wait_p99_s,
        }


def frontier(points: Iterable[CurvePoint]) -> list[CurvePoint]:
    """The points no other point beats on both axes, by idle GB-hours: strictly increasing idle
    GB-hours, strictly decreasing cold-start ratio (of equal points, the first given)."""
    ordered = sorted(points, key=lambda p: (p.idle_gpu_gb_hours, p.cold_start_ratio))
    kept: list[CurvePoint] = []
    for point in ordered:
        if not kept or point.cold_start_ratio < kept[-1].cold_start_ratio:
            kept.append(point)
    return kept


@dataclass(frozen=True, slots=True)
class Matched:
    """A baseline read off its curve at ``idle_gpu_gb_hours``, between ``low`` and ``high`` (the
    same point when it falls on one)."""

    idle_gpu_gb_hours: float
    cold_start_ratio: float
    wait_p99_s: float
    low: CurvePoint
    high: CurvePoint


def at_idle(points: Iterable[CurvePoint], idle_gpu_gb_hours: float) -> Matched | None:
    """The curve of ``points`` at ``idle_gpu_gb_hours`` (``None`` outside its range)."""
    curve = frontier(points)
    if not curve or not math.isfinite(idle_gpu_gb_hours):
        return None
    xs = [p.idle_gpu_gb_hours for p in curve]
    x = idle_gpu_gb_hours
    if x < xs[0] or x > xs[-1]:
        return None
    k = bisect.bisect_left(xs, x)
    if xs[k] == x:
        point = curve[k]
        return Matched(x, point.cold_start_ratio, point.wait_p99_s, point, point)
    low, high = curve[k - 1], curve[k]
    t = (x - low.idle_gpu_gb_hours) / (high.idle_gpu_gb_hours - low.idle_gpu_gb_hours)
    cold = _between(low.cold_start_ratio, high.cold_start_ratio, t)
    wait = _between(low.wait_p99_s, high.wait_p99_s, t)
    return Matched(x, cold, wait, low, high)


def _between(a: float, b: float, t: float) -> float:
    """``a`` + ``t`` of the way to ``b``, kept within ``[a, b]`` (rounding may not cross an
    end, or a curve would stop being monotone at its points)."""
    value = a + (b - a) * t
    return min(max(value, min(a, b)), max(a, b))


@dataclass(frozen=True, slots=True)
class Verdict:
    """prewarm (``ours``) against one baseline's curve at ``ours``'s idle GB-hours.

    ``outcome``: ``meets`` (at most ``share`` of the baseline's cold-start ratio, strictly less for
    a share of 1), ``misses``, ``tie`` (no cold starts for either), or ``beyond the curve``
    (``matched`` is ``None``; ``side`` says whether ours holds ``less`` idle memory than every
    setting or ``more`` than the one with the fewest cold starts).
    """

    baseline: str
    ours: CurvePoint
    curve: tuple[CurvePoint, ...]
    share: float
    matched: Matched | None
    outcome: str
    side: str | None = None
    cold_ratio: float | None = None


def verdict(
    baseline: str, ours: CurvePoint, *, curve: Iterable[CurvePoint], share: float
) -> Verdict:
    """``ours`` against ``baseline``'s ``curve`` at ``ours``'s idle GB-hours."""
    points = tuple(curve)
    matched = at_idle(points, ours.idle_gpu_gb_hours)
    if matched is None:
        edge = frontier(points)
        side = None
        if edge:
            side = "less" if ours.idle_gpu_gb_hours < edge[0].idle_gpu_gb_hours else "more"
        return Verdict(baseline, ours, points, share, None, "beyond the curve", side)
    mine, theirs = ours.cold_start_ratio, matched.cold_start_ratio
    cold_ratio = _ratio(mine, theirs)
    if mine == 0 and theirs == 0:
        outcome = "tie"
    elif share < 1.0:
        outcome = "meets" if mine <= share * theirs else "misses"
    else:
        outcome = "meets" if mine < share * theirs else "misses"
    return Verdict(baseline, ours, points, share, matched, outcome, None, cold_ratio)


def _ratio(ours: float, theirs: float) -> float:
    if theirs > 0:
        return ours / theirs
    return 1.0 if ours == 0 else math.inf


def target_text(share: float) -> str:
    """The target as a verdict line states it."""
    return f"<= {share:g}x" if share < 1.0 else f"< {share:g}x"


def verdict_line(v: Verdict, *, ours: str = "prewarm") -> str:
    """One line: the matched comparison, the target and outcome, and the waits beside it."""
    head = f"{ours} vs {v.baseline} at {_gbh(v.ours.idle_gpu_gb_hours)} idle GB-hours: "
    waits = (
        f"wait p99 {_s(v.ours.wait_p99_s)} (cold {_s(v.ours.cold_wait_p99_s)}, "
        f"queue {_s(v.ours.queue_wait_p99_s)})"
    )
    if v.matched is None:
        return (
            f"{head}{_beyond_text(v)}; {ours}'s cold-start ratio "
            f"{_g(v.ours.cold_start_ratio)}, {waits}"
        )
    m = v.matched
    where = m.low.label if m.low is m.high else f"between {m.low.label} and {m.high.label}"
    if v.outcome == "tie":
        cold = f"no cold starts for either ({where})"
    elif v.cold_ratio is not None and math.isinf(v.cold_ratio):
        cold = f"cold starts ({_g(v.ours.cold_start_ratio)}) where {v.baseline} has none ({where})"
    else:
        cold = (
            f"{v.cold_ratio:.2f}x its cold-start ratio ({_g(v.ours.cold_start_ratio)} vs "
            f"{_g(m.cold_start_ratio)}, {where})"
        )
    return (
        f"{head}{cold}; target {target_text(v.share)}: {v.outcome}; {waits} vs {_s(m.wait_p99_s)}"
    )


def _beyond_text(v: Verdict) -> str:
    edge = frontier(v.curve)
    if not edge:
        return f"beyond the curve ({v.baseline} has no points)"
    if v.side == "less":
        point, which = edge[0], "every setting holds more; the leanest"
    else:
        point, which = edge[-1], "the setting with the fewest cold starts"
    return (
        f"beyond the curve ({which}, {point.label}, holds {_gbh(point.idle_gpu_gb_hours)} "
        f"at a cold-start ratio of {_g(point.cold_start_ratio)})"
    )


def verdict_json(v: Verdict) -> dict[str, object]:
    """The verdict as the bench's JSON carries it: ``baseline_at_same_idle`` is ``null`` beyond
    the curve, ``cold_start_ratio_vs_baseline`` also where the baseline has no cold starts."""
    matched: dict[str, object] | None = None
    if v.matched is not None:
        matched = {
            "cold_start_ratio": v.matched.cold_start_ratio,
            "wait_p99_s": v.matched.wait_p99_s,
            "between": [v.matched.low.label, v.matched.high.label],
        }
    return {
        "idle_gpu_gb_hours": v.ours.idle_gpu_gb_hours,
        "cold_start_ratio": v.ours.cold_start_ratio,
        "wait_p99_s": v.ours.wait_p99_s,
        "cold_wait_p99_s": v.ours.cold_wait_p99_s,
        "queue_wait_p99_s": v.ours.queue_wait_p99_s,
        "baseline_at_same_idle": matched,
        "cold_start_ratio_vs_baseline": (
            v.cold_ratio if v.cold_ratio is None or math.isfinite(v.cold_ratio) else None
        ),
        "target": target_text(v.share),
        "verdict": v.outcome,
        "beyond": v.side,
    }


def _g(value: float) -> str:
    return f"{value:.3g}"


def _gbh(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.4g}"


def _s(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds >= 100 else f"{seconds:.3g} s"
