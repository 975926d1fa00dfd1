"""Draws ``prewarm bench --plot``: cold starts vs idle GPU memory per policy, and forecasts.

Left: each policy's point at its own setting (a star: the run in the table) and, with ``--sweep``,
its curve over its settings (``--budget-sweep``: over budgets; circles joined by a line):
cold-start ratio against idle GPU GB-hours, lower-left is better; the legend says what the markers
are (:data:`PLOT_MARKERS`). Right: for the busiest models,
the prewarm policy's one-step-ahead forecast against the actual request rate. Matplotlib with the
Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from prewarm.sim.bench import BenchInput
from prewarm.sim.engine import SimResult
from prewarm.sim.matched import CurvePoint

PLOT_MARKERS = (
    "stars mark each policy at its own setting (the table's run); circles joined by a line are "
    "the same policy at the other settings of --sweep (or budgets of --budget-sweep)"
)
"""What the left panel's markers mean, for the bench's text output and the README."""


def draw_bench(
    path: Path,
    bench: BenchInput,
    results: dict[str, SimResult],
    curves: Mapping[str, Sequence[CurvePoint]] | None,
) -> None:
    """Write the figure to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, result in results.items():
        summary = result.summary()
        points = curves.get(name) if curves else None
        if points:
            ordered = sorted(points, key=lambda p: p.idle_gpu_gb_hours)
            xs = [p.idle_gpu_gb_hours for p in ordered]
            ys = [p.cold_start_ratio for p in ordered]
            (line,) = left.plot(xs, ys, marker="o", label=name)
            color = line.get_color()
        else:
            color = None
        left.scatter(
            [summary["idle_gpu_gb_hours"]],
            [summary["cold_start_ratio"]],
            marker="*",
            s=160,
            color=color,
            label=None if points else name,
            zorder=3,
        )
    left.set_xlabel("idle GPU GB-hours")
    left.set_ylabel("cold-start ratio")
    left.set_yscale("symlog", linthresh=1e-4)
    # A ratio is never negative: no negative decades, just room for the markers at 0.
    left.set_ylim(bottom=-2e-5)
    left.set_title(f"{bench.name}: cold starts vs idle GPU memory")
    left.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles, _labels = left.get_legend_handles_labels()
    # The stars carry no label of their own when a policy has a curve (its line does): one
    # grey proxy entry says what a star is, and one what the circles are.
    star = Line2D([], [], marker="*", markersize=11, color="grey", linestyle="none")
    star.set_label("own setting (the table's run)")
    handles.append(star)
    if curves:
        circle = Line2D([], [], marker="o", color="grey")
        circle.set_label("other settings (sweep)")
        handles.append(circle)
    left.legend(handles=handles, fontsize=8)
    trace = bench.trace
    forecast_log = next((r.forecasts for r in results.values() if r.forecasts), None)
    if forecast_log is not None and forecast_log[0] and forecast_log[1]:
        rows, times, predicted = forecast_log
        stacked = np.stack(predicted)
        start = trace.start_s
        for j, i in enumerate(rows):
            actual = trace.counts[i] / trace.dt_s
            hours = (np.arange(trace.ticks) * trace.dt_s) / 3600.0
            (line,) = right.plot(
                hours, actual, lw=0.6, alpha=0.6, label=f"{trace.models[i]} actual"
            )
            right.plot(
                (np.asarray(times) - start) / 3600.0,
                stacked[:, j],
                lw=1.2,
                color=line.get_color(),
                ls="--",
                label=f"{trace.models[i]} forecast",
            )
        right.set_xlabel("hours since trace start")
        right.set_ylabel("requests / s")
        right.set_title("prewarm forecast (one step ahead) vs actual, busiest models")
        right.legend(fontsize=7)
    else:
        right.text(0.5, 0.5, "run with the prewarm policy for forecasts", ha="center")
        right.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
