"""The demo's report: ``report.json``, ``report.txt``, ``report.png`` and ``report.html``.

Owns: putting the live run's timelines and the simulator's policy table into words and one
figure: for each shown spike, actual requests, the forecast made 30 minutes ahead with its
p10-p90 interval, the moment the Preload was issued, the moment the agent had the weights
resident, the spike's first request, and the reactive autoscaler's start beside it; the models the
quality gate sent back to reactive handling, and why; and why the live figures and the simulated
ones differ. Must not: run anything.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.ids import ModelId
from forecaster.types import SeriesBatch
from prewarm.demo.fallbacks import Fallback
from prewarm.demo.simulated import SimulatedRuns
from prewarm.demo.spikes import DemoWindow
from prewarm.demo.timeline import FORECAST_AHEAD_S, ModelTimeline
from prewarm.sim.bench import WARMUP_MAX_S, WARMUP_SHARE


@dataclass(frozen=True)
class DemoOutcome:
    """Everything the report is made of."""

    trace: str
    batch: SeriesBatch
    window: DemoWindow
    timelines: list[ModelTimeline]
    counts: dict[str, int]
    simulated: SimulatedRuns | None
    live_s: float
    wall_s: float
    bytes_per_gb: int
    weights_gb: dict[ModelId, float]
    fallbacks: tuple[Fallback, ...] = ()


def _clock(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%a %H:%M:%S", time.gmtime(seconds))


def _before(event_s: float | None, onset_s: float) -> str:
    if event_s is None:
        return "never"
    minutes = (onset_s - event_s) / 60.0
    return f"{_clock(event_s)} ({minutes:.0f} min before the spike)"


def timeline_lines(line: ModelTimeline, outcome: DemoOutcome) -> list[str]:
    """The text of one spike's timeline."""
    gb = outcome.weights_gb.get(line.model, 0.0)
    load = (
        f"; the agent's load took {line.load_s * 1000:.0f} ms for "
        f"{line.loaded_bytes / 1e6:.0f} MB "
        f"(the demo's scaled-down copy of {gb:g} GB)"
        if line.load_s is not None
        else ""
    )
    forecast = next((p for p in line.forecasts if abs(p.step_s - line.onset_s) < 1.0), None)
    ahead = (
        f"p50 {forecast.p50:,.0f}, p10-p90 {forecast.p10:,.0f}-{forecast.p90:,.0f}, "
        f"actual {line.first_step:,.0f}"
        if forecast is not None
        else "none made"
    )
    return [
        f"{line.model}: spike at {_clock(line.onset_s)}, {line.spike_requests:,.0f} requests "
        f"(peak {line.peak:,.0f} per step)",
        f"  forecast          for the spike's first step, made {FORECAST_AHEAD_S / 60:.0f} min "
        f"ahead: {ahead}",
        f"  Preload issued    {_before(line.preload_issued_s, line.onset_s)}"
        + (f" to node {line.preload_node} ({line.preload_tier})" if line.preload_node else ""),
        f"  weights resident  {_before(line.resident_s, line.onset_s)}{load}",
        f"  replica floor     {_before(line.floor_raised_s, line.onset_s)} (dry run: no cluster)",
        f"  spike starts      {_clock(line.onset_s)} (its first {_minutes(outcome)} step)",
        f"  reactive          a new replica {line.reactive_start_s:.0f} s after the spike starts "
        "(container, image pull, weights from the source, cold compile)",
        f"  prewarm           replica ready {line.prewarm_wait_s:.0f} s after the spike starts "
        f"(weights in {line.tier_at_onset.label}, replica floor {line.floor_at_onset})",
        f"  saved             {line.saved_s:.0f} s",
    ]


def _minutes(outcome: DemoOutcome) -> str:
    return f"{outcome.batch.step_s / 60:.0f}-minute"


def report_document(outcome: DemoOutcome) -> dict[str, Any]:
    """The report's JSON (``report.json``, and ``prewarm demo --json``): the trace, the live
    window, the models, each shown spike's timeline, the agents' answers, the quality gate's
    fallbacks, each simulated policy's summary and the seconds the demo took."""
    return {
        "trace": outcome.trace,
        "live_window": {
            "start_s": outcome.batch.start_s + outcome.window.start * outcome.batch.step_s,
            "stop_s": outcome.batch.start_s + outcome.window.stop * outcome.batch.step_s,
        },
        "models": list(outcome.batch.models),
        "timelines": [line.document() for line in outcome.timelines],
        "agent_actions": outcome.counts,
        "fallbacks": [fallback.document() for fallback in outcome.fallbacks],
        "policies": outcome.simulated.summaries if outcome.simulated else {},
        "live_s": outcome.live_s,
        "wall_s": outcome.wall_s,
    }


def write_report(outcome: DemoOutcome, out: Path) -> dict[str, Path]:
    """Write the report files under ``out``; their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    document = report_document(outcome)
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    lines = _text(outcome)
    (out / "report.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(outcome, out / "report.png")
    _html(lines, out / "report.png", out / "report.html")
    return {
        "json": out / "report.json",
        "text": out / "report.txt",
        "png": out / "report.png",
        "html": out / "report.html",
    }


def _text(outcome: DemoOutcome) -> list[str]:
    window = outcome.window
    step_s = outcome.batch.step_s
    start_s = outcome.batch.start_s
    lines = [
        f"prewarm demo on {outcome.trace}: {len(outcome.batch.models)} models, "
        f"live {_clock(start_s + window.start * step_s)} to "
        f"{_clock(start_s + window.stop * step_s)} (trace clock), "
        f"{outcome.live_s:.0f} s live, {outcome.wall_s:.0f} s in all",
        "live: the daemon's decision cycle and one real GPU agent process per node; "
        f"{outcome.counts['preloads_ok']} Preload calls (each tick repeats the plan's) and "
        f"{outcome.counts['evicts_ok']} Evicts answered ok, "
        f"{outcome.counts['errors']} action errors; cluster actions dry-run",
        "starts are summed from the stage figures the planner uses (prewarm explain: the "
        "catalog's, as the demo's scaled-down loads teach nothing about real ones)",
        "",
    ]
    for line in outcome.timelines:
        lines += [*timeline_lines(line, outcome), ""]
    lines += fallback_lines(outcome.fallbacks)
    if outcome.simulated is not None:
        lines += [*live_vs_simulated(outcome), ""]
        lines.append("same trace and catalog in the simulator (prewarm bench), all models:")
        lines.append(
            f"{'policy':<18} {'cold_start_ratio':>16} {'idle_gpu_gb_hours':>18} "
            f"{'gpu_node_hours':>15} {'wait_p99_s':>11}"
        )
        for name, summary in outcome.simulated.summaries.items():
            lines.append(
                f"{name:<18} {summary['cold_start_ratio']:>16.4f} "
                f"{summary['idle_gpu_gb_hours']:>18.1f} {summary['gpu_node_hours']:>15.1f} "
                f"{summary['wait_p99_s']:>11.1f}"
            )
    return lines


def fallback_lines(fallbacks: tuple[Fallback, ...]) -> list[str]:
    """The models the quality gate sent back to reactive handling during the live run, and why
    (nothing when there were none)."""
    if not fallbacks:
        return []
    return [
        f"{len(fallbacks)} model(s) fell back to reactive handling during the live run (the "
        "quality gate: a live forecast too poor to act on leaves the model to the autoscaler):",
        *(f"  {fallback.line()}" for fallback in fallbacks),
        "",
    ]


def live_vs_simulated(outcome: DemoOutcome) -> list[str]:
    """Why the live figures and the simulated ones differ: they measure different things over
    different spans."""
    batch, window = outcome.batch, outcome.window
    live_hours = (window.stop - window.start) * batch.step_s / 3600.0
    days = batch.steps * batch.step_s / 86400.0
    warmup_h = min(WARMUP_SHARE * batch.steps * batch.step_s, WARMUP_MAX_S) / 3600.0
    requests = float(np.nansum(batch.counts))
    met = sum(1 for line in outcome.timelines if line.resident_s is not None)
    saved = [line.saved_s for line in outcome.timelines]
    mean_saved = sum(saved) / len(saved) if saved else 0.0
    return [
        "live and simulated figures differ: they measure different things over different spans.",
        f"  live: the {len(outcome.timelines)} largest spikes of the last day, {live_hours:.0f} h "
        "of it replayed through real agent processes: weights resident before "
        f"{met} of the {len(outcome.timelines)} spikes, {mean_saved:.0f} s saved per spike on "
        "average. A spike is a model's hardest moment (a burst out of a quiet spell), so these "
        "are worst cases, not averages.",
        f"  simulated: every request of the whole trace ({days:.0f} days, {requests:,.0f} "
        f"requests of {len(batch.models)} models; the first {warmup_h:.0f} h replayed but not "
        "scored) on a simulated cluster. cold_start_ratio is the share of all those requests "
        "that found no ready replica: an average over quiet and busy hours alike, where most "
        "requests arrive while a replica is already serving, so it is far smaller than what a "
        "spike alone would show.",
    ]


def _plot(outcome: DemoOutcome, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    batch, window = outcome.batch, outcome.window
    rows = len(outcome.timelines)
    figure, axes = plt.subplots(rows, 1, figsize=(11, 2.9 * rows), squeeze=False)
    steps = np.arange(window.start, window.stop)
    times = (batch.start_s + steps * batch.step_s).astype("datetime64[s]")
    for axis, line in zip(axes[:, 0], outcome.timelines, strict=True):
        row = batch.models.index(line.model)
        actual = np.nan_to_num(batch.counts[row, window.start : window.stop])
        axis.step(times, actual, where="post", color="black", linewidth=1.2, label="actual")
        if line.forecasts:
            at = np.array([p.step_s for p in line.forecasts]).astype("datetime64[s]")
            ahead = f"forecast p50, made {FORECAST_AHEAD_S / 60:.0f} min ahead"
            axis.plot(at, [p.p50 for p in line.forecasts], color="tab:blue", label=ahead)
            axis.fill_between(at, [p.p10 for p in line.forecasts], [p.p90 for p in line.forecasts],
                              color="tab:blue", alpha=0.2, step=None,
                              label="p10-p90 interval")  # fmt: skip
        onset = np.datetime64(int(line.onset_s), "s")
        if line.preload_issued_s is not None:
            issued = np.datetime64(int(line.preload_issued_s), "s")
            axis.plot([issued], [0], marker="^", markersize=10, color="tab:purple",
                      linestyle="none", label="Preload issued")  # fmt: skip
        if line.resident_s is not None:
            axis.axvline(np.datetime64(int(line.resident_s), "s"), color="tab:green",
                         linestyle="--", linewidth=1.2,
                         label="weights resident (agent)")  # fmt: skip
        axis.axvline(onset, color="tab:red", linewidth=1.2, label="spike starts")
        reactive_end = np.datetime64(int(line.onset_s + line.reactive_start_s), "s")
        axis.axvspan(onset, reactive_end, color="tab:orange", alpha=0.25,
                     label=f"reactive scale-up: {line.reactive_start_s:.0f} s")  # fmt: skip
        axis.set_title(
            f"{line.model}: the spike's replica ready {line.saved_s:.0f} s sooner "
            f"(prewarm {line.prewarm_wait_s:.0f} s after the spike starts, "
            f"reactive {line.reactive_start_s:.0f} s)",
            fontsize=9,
        )
        first_s = min(line.onset_s - 2 * 3600, line.preload_issued_s or line.onset_s)
        axis.set_xlim(
            np.datetime64(int(max(first_s, float(times[0].astype(float)))), "s"),
            np.datetime64(int(line.onset_s + 5400), "s"),
        )
        axis.set_ylabel(f"requests / {batch.step_s / 60:.0f} min", fontsize=8)
        axis.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
        axis.legend(fontsize=7, loc="upper left", ncols=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _html(lines: list[str], png: Path, path: Path) -> None:
    """A one-page HTML report (the PNG embedded), viewable anywhere and easy to screenshot."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    text = html.escape("\n".join(lines))
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>prewarm demo</title><style>"
        "body{font-family:sans-serif;margin:24px;background:#111217;color:#ccccdc}"
        "h1{font-size:20px}pre{font-size:12px}"
        "img{max-width:100%;background:white;margin-top:12px}</style></head><body>"
        "<h1>prewarm: spikes met by weights loaded before them</h1>"
        f"<img alt='spike timelines' src='data:image/png;base64,{image}'><pre>{text}</pre>"
        "</body></html>\n",
        encoding="utf-8",
    )
