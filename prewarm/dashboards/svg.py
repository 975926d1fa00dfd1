"""A small inline-SVG time-series chart: the static stand-in for a Grafana timeseries panel.

Owns: scaling series into a plot area, "nice" y ticks labelled in the panel's unit, UTC time ticks,
axis titles, and one ``<polyline class="series">`` per unbroken run of samples (a lone sample is a
``<circle class="series">``). A run breaks where a sample is missing or not finite, as Grafana
breaks a line at nulls: a gap in the data stays visible.
Must not: do I/O, or draw a legend (the page lists series as HTML, which wraps and can be copied).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

import numpy as np

from prewarm.dashboards.units import axis_title, format_value

WIDTH = 760
HEIGHT = 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 78, 12, 10, 42
_TIME_STEPS_S = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)


@dataclass(frozen=True)
class ChartLine:
    """One series to draw: its legend name, colour and samples (epoch seconds, values)."""

    name: str
    color: str
    times_s: np.ndarray
    values: np.ndarray


def line_chart(
    lines: Sequence[ChartLine],
    *,
    unit: str,
    start_s: float,
    end_s: float,
    step_s: float,
    title: str = "",
) -> str:
    """An ``<svg>`` element drawing ``lines`` over ``[start_s, end_s]``.

    Samples further apart than 1.5 steps are not joined. The y range covers every finite value and
    zero when all values are of one sign (a rate or a ratio reads against zero).
    """
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    finite = [line.values[np.isfinite(line.values)] for line in lines]
    values = np.concatenate(finite) if finite else np.array([])
    low, high = _y_range(values)
    span_s = max(end_s - start_s, 1e-9)

    def x_of(t: float) -> float:
        return _LEFT + (t - start_s) / span_s * plot_w

    def y_of(v: float) -> float:
        return _TOP + (high - v) / (high - low) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for tick in _nice_ticks(low, high):
        y = y_of(tick)
        parts.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        label = escape(format_value(tick, unit))
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{label}</text>'
        )
    for stamp, label in _time_ticks(start_s, end_s):
        x = x_of(stamp)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" class="grid"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" class="tick" text-anchor="middle">'
            f"{label}</text>"
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" class="axis" text-anchor="middle">'
        "time (UTC)</text>"
    )
    parts.append(
        f'<text x="14" y="{_TOP + plot_h / 2:.1f}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2:.1f})">{escape(axis_title(unit))}</text>'
    )
    for index, line in enumerate(lines):
        for run in _runs(line.times_s, line.values, step_s):
            points = [(x_of(t), y_of(v)) for t, v in run]
            name = escape(line.name)
            if len(points) == 1:
                x, y = points[0]
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" class="series" '
                    f'data-series="{index}" fill="{line.color}"><title>{name}</title></circle>'
                )
                continue
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{coords}" class="series" data-series="{index}" '
                f'stroke="{line.color}"><title>{name}</title></polyline>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def _y_range(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if low >= 0:
        low = 0.0
    elif high <= 0:
        high = 0.0
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high + (high - low) * 0.05


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values between ``low`` and ``high`` about ``count`` apart: 0, 0.25, 0.5, ..."""
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _time_ticks(start_s: float, end_s: float, count: int = 6) -> list[tuple[float, str]]:
    span = end_s - start_s
    step = next((s for s in _TIME_STEPS_S if span / s <= count), 86400)
    fmt = "%H:%M:%S" if step < 60 else ("%H:%M" if span <= 86400 else "%m-%d %H:%M")
    first = math.ceil(start_s / step) * step
    ticks = []
    stamp = float(first)
    while stamp <= end_s:
        ticks.append((stamp, datetime.fromtimestamp(stamp, tz=UTC).strftime(fmt)))
        stamp += step
    return ticks


def _runs(
    times_s: np.ndarray, values: np.ndarray, step_s: float
) -> list[list[tuple[float, float]]]:
    """Unbroken runs of finite samples, no two neighbours more than 1.5 steps apart."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    previous = -math.inf
    for t, v in zip(times_s.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            if current:
                runs.append(current)
            current, previous = [], -math.inf
            continue
        if current and t - previous > 1.5 * step_s:
            runs.append(current)
            current = []
        current.append((t, v))
        previous = t
    if current:
        runs.append(current)
    return runs
