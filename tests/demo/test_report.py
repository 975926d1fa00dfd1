"""The demo's report without running the demo: its JSON, the fallbacks named with their reason,
and the note on why the live and simulated figures differ."""

from __future__ import annotations

import json

import numpy as np

from common.ids import ModelId
from forecaster.types import SeriesBatch
from prewarm.cli.output import dumps_json
from prewarm.demo.fallbacks import Fallback
from prewarm.demo.report import (
    DemoOutcome,
    fallback_lines,
    live_vs_simulated,
    report_document,
)
from prewarm.demo.simulated import SimulatedRuns
from prewarm.demo.spikes import DemoWindow

DAY = 86_400.0


def _outcome(fallbacks: tuple[Fallback, ...]) -> DemoOutcome:
    step_s = 600.0
    steps = int(14 * DAY / step_s)
    batch = SeriesBatch(
        models=(ModelId("m-large/c1"), ModelId("m-small/c2")),
        start_s=0.0,
        step_s=step_s,
        counts=np.full((2, steps), 3.0),
    )
    return DemoOutcome(
        trace="builtin:test",
        batch=batch,
        window=DemoWindow(spikes=(), start=steps - 48, stop=steps),
        timelines=[],
        counts={"preloads_ok": 5, "evicts_ok": 1, "errors": 0},
        simulated=SimulatedRuns(summaries={"prewarm": {"cold_start_ratio": 0.0004}}),
        live_s=30.0,
        wall_s=60.0,
        bytes_per_gb=1024,
        weights_gb={ModelId("m-large/c1"): 14.5, ModelId("m-small/c2"): 1.0},
        fallbacks=fallbacks,
    )


def _fallback(error_ratio: float, under: float) -> Fallback:
    return Fallback(
        model=ModelId("m-small/c2"),
        at_s=DAY * 13 + 5 * 3600 + 600,
        steps=40,
        error_ratio=error_ratio,
        under_forecast_ratio=under,
        max_error_ratio=1.0,
        max_under_forecast_ratio=0.3,
        planning_quantile=0.9,
    )


def test_a_fallback_names_the_model_the_moment_and_the_limit_it_broke() -> None:
    assert _fallback(1.42, 0.1).line() == (
        "m-small/c2 at Wed 05:10: forecast error 1.42x the mean actual (limit 1.00x) "
        "over the last 40 steps"
    )
    both = _fallback(2.0, 0.45).reason()
    assert "forecast error 2.00x" in both
    assert "45% of steps above the p90 forecast (limit 30%)" in both


def test_report_document_is_json_with_the_fallbacks() -> None:
    outcome = _outcome((_fallback(1.42, 0.1),))
    document = report_document(outcome)
    assert json.loads(dumps_json(document)) == json.loads(json.dumps(document))
    assert document["models"] == ["m-large/c1", "m-small/c2"]
    assert document["agent_actions"]["preloads_ok"] == 5
    (fallback,) = document["fallbacks"]
    assert fallback["model"] == "m-small/c2"
    assert fallback["reason"].startswith("forecast error 1.42x the mean actual")
    assert document["policies"] == {"prewarm": {"cold_start_ratio": 0.0004}}


def test_the_text_names_fallbacks_and_explains_live_against_simulated() -> None:
    outcome = _outcome((_fallback(1.42, 0.1),))
    lines = fallback_lines(outcome.fallbacks)
    assert lines[0].startswith("1 model(s) fell back to reactive handling")
    assert lines[1].startswith("  m-small/c2 at Wed 05:10: forecast error 1.42x")
    assert fallback_lines(()) == []
    note = "\n".join(live_vs_simulated(outcome))
    assert "8 h of it replayed through real agent processes" in note
    assert "worst cases, not averages" in note
    assert "14 days, 12,096 requests of 2 models" in note
    assert "the first 24 h replayed but not scored" in note
