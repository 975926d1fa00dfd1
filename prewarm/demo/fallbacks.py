"""The models the demo's daemon sent back to reactive handling, and why.

Owns: reading the quality gate's verdicts off each cycle's report and putting each into words: the
model, when (trace clock), and which of the gate's limits its live forecast broke
(``prewarm.cycle.quality.passes_gate``: mean absolute error over mean actual, and the share of
steps above the planning quantile, over the last ``quality_gate.window_steps`` steps). Must not:
judge anything itself; the cycle's gate is the only judge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common.ids import ModelId
from prewarm.cycle.config import QualityGateConfig
from prewarm.cycle.quality import Quality, gate_failure
from prewarm.cycle.step import CycleReport


@dataclass(frozen=True, slots=True)
class Fallback:
    """One model the gate sent back to reactive handling, with the figures that decided it."""

    model: ModelId
    at_s: float
    """Trace-clock seconds of the cycle that gated it."""
    steps: int
    error_ratio: float
    under_forecast_ratio: float
    max_error_ratio: float
    max_under_forecast_ratio: float
    planning_quantile: float

    def reason(self) -> str:
        """Which limit the live forecast broke (:func:`prewarm.cycle.quality.gate_failure`)."""
        return gate_failure(
            Quality(
                steps=self.steps,
                error_ratio=self.error_ratio,
                under_forecast_ratio=self.under_forecast_ratio,
            ),
            max_error_ratio=self.max_error_ratio,
            max_under_forecast_ratio=self.max_under_forecast_ratio,
            planning_quantile=self.planning_quantile,
        )

    def line(self) -> str:
        """``MODEL at Sun 05:10: REASON``."""
        clock = time.strftime("%a %H:%M", time.gmtime(self.at_s))
        return f"{self.model} at {clock}: {self.reason()}"

    def document(self) -> dict[str, object]:
        """The JSON of one fallback (``report.json``'s ``fallbacks``)."""
        return {
            "model": str(self.model),
            "at_s": self.at_s,
            "steps": self.steps,
            "error_ratio": self.error_ratio,
            "max_error_ratio": self.max_error_ratio,
            "under_forecast_ratio": self.under_forecast_ratio,
            "max_under_forecast_ratio": self.max_under_forecast_ratio,
            "reason": self.reason(),
        }


class FallbackRecorder:
    """Collects, cycle by cycle, each model the quality gate newly sends back to reactive."""

    def __init__(self, gate: QualityGateConfig, *, planning_quantile: float) -> None:
        self._gate = gate
        self._planning_quantile = planning_quantile
        self.fallbacks: list[Fallback] = []
        self._last_cycle_s: float | None = None

    def record(self, report: CycleReport | None, *, trace_s: float) -> list[Fallback]:
        """The fallbacks ``report`` (None: the tick ran no cycle) adds; also kept in order."""
        if report is None or report.now_s == self._last_cycle_s:
            return []  # no cycle yet, or a tick that ran none (the latest report is an old one)
        self._last_cycle_s = report.now_s
        added = [
            Fallback(
                model=model,
                at_s=trace_s,
                steps=report.quality[model].steps,
                error_ratio=report.quality[model].error_ratio,
                under_forecast_ratio=report.quality[model].under_forecast_ratio,
                max_error_ratio=self._gate.max_error_ratio,
                max_under_forecast_ratio=self._gate.max_under_forecast_ratio,
                planning_quantile=self._planning_quantile,
            )
            for model in sorted(report.newly_gated)
            if model in report.quality
        ]
        self.fallbacks.extend(added)
        return added
