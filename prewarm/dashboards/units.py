"""Grafana's panel units, as the static pages print them: axis titles and tick labels.

Owns: the units the dashboards use (``short``, ``reqps``, ``percentunit``, ``s``, ``bytes``,
``Bps``), each with an axis title and a compact value format; any other unit id is printed as it
is, with SI prefixes. ``bytes`` and ``Bps`` are binary (KiB, MiB, GiB), as in Grafana;
``percentunit`` is a ratio (0.25 is 25 %).
Must not: do I/O.
"""

from __future__ import annotations

import math

_TITLES = {
    "short": "value",
    "reqps": "requests / s",
    "percentunit": "percent",
    "s": "seconds",
    "bytes": "bytes",
    "Bps": "bytes / s",
}


def axis_title(unit: str) -> str:
    """The y axis title for a panel unit."""
    return _TITLES.get(unit, unit)


def format_value(value: float, unit: str) -> str:
    """``value`` for a tick label or a legend: ``0.25`` in ``percentunit`` is ``25%``."""
    if not math.isfinite(value):
        return str(value)
    if unit == "percentunit":
        return f"{_number(value * 100)}%"
    if unit == "bytes":
        return _binary(value, "B")
    if unit == "Bps":
        return _binary(value, "B/s")
    if unit == "s":
        return _seconds(value)
    if unit == "reqps":
        return f"{_si(value)} req/s"
    return _si(value)


def _number(value: float) -> str:
    """At most three significant digits, no trailing zeros: ``12.5``, ``0.0031``, ``250``."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _si(value: float) -> str:
    for size, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{_number(value / size)}{prefix}"
    return _number(value)


def _binary(value: float, suffix: str) -> str:
    for power, prefix in ((4, "Ti"), (3, "Gi"), (2, "Mi"), (1, "Ki")):
        size = 1024.0**power
        if abs(value) >= size:
            return f"{_number(value / size)} {prefix}{suffix}"
    return f"{_number(value)} {suffix}"


def _seconds(value: float) -> str:
    magnitude = abs(value)
    if magnitude != 0 and magnitude < 1e-3:
        return f"{_number(value * 1e6)} µs"
    if magnitude != 0 and magnitude < 1:
        return f"{_number(value * 1e3)} ms"
    if magnitude < 120:
        return f"{_number(value)} s"
    if magnitude < 7200:
        return f"{_number(value / 60)} min"
    return f"{_number(value / 3600)} h"
