"""Request counters as serving engines and gateways export them, written for promtool to backfill.

Owns: turning per-minute request counts of one exported series (its exact metric name and labels,
as vLLM, Triton, Istio, ... put them on ``/metrics``) into the samples a 15-second scrape would have
stored, including a process that goes away (scale to zero: no samples at all) and comes back (a new
process: its counter starts again at 0). Must not: know what prewarm makes of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCRAPE_S = 15.0


@dataclass(frozen=True)
class ExportedCounter:
    """One exported series: ``per_minute[j]`` requests in minute ``j``; NaN = no process (absent).

    Each run of consecutive minutes with a process is one process lifetime; its counter starts at
    0 at the run's first minute and grows evenly within each minute.
    """

    name: str
    labels: dict[str, str]
    per_minute: Sequence[float] = field(default_factory=list)


def samples(series: ExportedCounter, start_s: float) -> list[tuple[float, float]]:
    """``(timestamp, counter value)`` every :data:`SCRAPE_S` while a process exists."""
    out: list[tuple[float, float]] = []
    per_scrape = round(60.0 / SCRAPE_S)
    value = 0.0
    alive = False
    for minute, count in enumerate(series.per_minute):
        minute_start = start_s + minute * 60.0
        if math.isnan(count):
            alive = False
            continue
        if not alive:
            value = 0.0  # a new process: the counter starts again
            out.append((minute_start, value))
            alive = True
        for k in range(1, per_scrape + 1):
            out.append((minute_start + k * SCRAPE_S, value + count * k / per_scrape))
        value += count
    return out


def write_openmetrics(series: Sequence[ExportedCounter], start_s: float, path: Path) -> None:
    """Every series as OpenMetrics ``unknown`` families named exactly as exported (``_total`` or
    not, ``vllm:`` colons included), grouped by name as OpenMetrics requires, ``# EOF`` last."""
    by_name: dict[str, list[ExportedCounter]] = {}
    for item in series:
        by_name.setdefault(item.name, []).append(item)
    lines: list[str] = []
    for name, items in by_name.items():
        lines.append(f"# TYPE {name} unknown")
        for item in items:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(item.labels.items()))
            for stamp, value in samples(item, start_s):
                lines.append(f"{name}{{{labels}}} {value:.3f} {stamp:.3f}")
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
