"""``prewarm bench``: replay a trace against prewarm and the policies people use today.

Prints a table (and ``--json PATH|-``, :mod:`prewarm.cli.output`) of cold starts, waits (p99 split
into cold-start wait and queueing), idle GPU memory and node-hours per policy on one simulated
cluster under one GPU memory budget, then one line per baseline putting prewarm's cold starts, idle
GPU memory and GPU node-hours against it. ``--sweep`` runs each tunable policy at its documented
settings, giving its curve of cold starts against idle GB-hours, and compares prewarm with each
baseline *at the same idle GPU memory* (read off the baseline's curve, ``prewarm.sim.matched``).
``--budget-sweep`` varies the budget instead. ``--plot`` draws the curves, with a forecast-vs-actual
panel for the busiest models (stars: each policy at its own setting, the table's run; circles on a
line: its sweep). Progress goes to stderr: a live bar on a terminal, plain lines (each run at each
quarter of the trace) in a log or a pipe. Bad input exits 2 before any run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from common.errors import InvalidInput
from planner.catalog import Catalog, load_catalog
from prewarm.cli.output import JsonCommand, JsonOption, JsonOutput, print_table
from prewarm.data import resolve_trace
from prewarm.sim.bench import (
    SERVING_OBJECTIVE_P99_S,
    BenchInput,
    bench_document,
    check_policy_names,
    comparison_lines,
    curves_json,
    load_bench_input,
    matched_verdicts,
    own_point,
    run_bench,
    run_budget_sweep,
    run_sweep,
    serving_check,
)
from prewarm.sim.engine import SUMMARY_FIELDS
from prewarm.sim.matched import CURVE_COLUMNS, CurvePoint, verdict_json, verdict_line
from prewarm.sim.plot import PLOT_MARKERS
from prewarm.sim.policies import POLICY_NAMES

_COLUMNS = ("policy", *SUMMARY_FIELDS)


def _resolve_trace(text: str) -> tuple[Path, str]:
    """The trace file of a ``--trace`` argument (a path or ``builtin:NAME``) and its label."""
    path = resolve_trace(text)
    return path, text if text.startswith("builtin:") else path.name


class _LineProgress:
    """Progress as plain lines on stderr, for a log file or a pipe (no live bar there): one line
    per policy when it passes each quarter of the trace, with the seconds since it began."""

    def __init__(self, total_ticks: int, label: str) -> None:
        self.total = max(1, total_ticks)
        self.label = label
        self.done: dict[str, int] = {}
        self.began: dict[str, float] = {}
        self.next_begins = time.monotonic()
        """Policies run one after another: the next one begins when the last one finished."""

    def advance(self, name: str, ticks: int) -> None:
        now = time.monotonic()
        before = self.done.get(name, 0)
        self.began.setdefault(name, self.next_begins)
        after = before + ticks
        self.done[name] = after
        quarter_before, quarter_after = 4 * before // self.total, 4 * after // self.total
        if quarter_after > quarter_before:
            state = "done" if after >= self.total else f"{25 * quarter_after}%"
            elapsed = now - self.began[name]
            if after >= self.total:
                self.next_begins = now
            typer.echo(f"bench: {self.label}{name} {state} ({elapsed:.1f} s)", err=True)


@contextmanager
def _progress(bench: BenchInput) -> Iterator[Callable[[str, int], None]]:
    """``advance(label, ticks)`` for the runs made inside: a bar per run on a terminal, plain
    lines otherwise."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _LineProgress(bench.trace.ticks, "").advance
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def advance(label: str, ticks: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=bench.trace.ticks)
            progress.advance(tasks[label], ticks)

        yield advance


def _curve_rows(curves: dict[str, list[CurvePoint]]) -> list[list[object]]:
    return [
        [
            name,
            point.label,
            point.cold_start_ratio,
            point.idle_gpu_gb_hours,
            point.wait_p99_s,
            point.cold_wait_p99_s,
            point.queue_wait_p99_s,
        ]
        for name, points in curves.items()
        for point in points
    ]


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the CLI."""

    @app.command("bench", cls=JsonCommand)
    def bench(
        trace: Annotated[
            str,
            typer.Option("--trace", help="Trace CSV (timestamp,model,requests), builtin:NAME."),
        ],
        catalog: Annotated[
            Path | None, typer.Option("--catalog", help="Model catalog YAML (optional).")
        ] = None,
        policies: Annotated[
            str,
            typer.Option("--policies", help=f"Comma-separated, from: {', '.join(POLICY_NAMES)}."),
        ] = ",".join(POLICY_NAMES),
        gpu_memory_budget: Annotated[
            float | None,
            typer.Option(
                "--gpu-memory-budget",
                help="GB of GPU memory for model weights, cluster-wide (default: from the trace).",
            ),
        ] = None,
        sweep: Annotated[
            bool,
            typer.Option(
                "--sweep",
                help="Run each tunable policy at its documented settings (cold starts vs idle "
                "GB-h) and compare prewarm with each baseline at the same idle GB-h.",
            ),
        ] = False,
        budget_sweep: Annotated[
            bool,
            typer.Option(
                "--budget-sweep", help="Vary the GPU memory budget (0.25x-4x) for every policy."
            ),
        ] = False,
        json_out: JsonOption = None,
        plot: Annotated[
            Path | None, typer.Option("--plot", help="Draw the curves and forecasts to a PNG.")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of arrivals and delays.")] = 0,
    ) -> None:
        """Replay a trace against each policy on one simulated GPU cluster."""
        names = check_policy_names([n.strip() for n in policies.split(",") if n.strip()])
        out = JsonOutput.parse(json_out)
        if gpu_memory_budget is not None and not gpu_memory_budget > 0:
            raise InvalidInput(f"--gpu-memory-budget must be > 0 GB, got {gpu_memory_budget}")
        if plot is not None and not plot.parent.resolve().is_dir():
            raise InvalidInput(f"cannot write {plot}: its directory does not exist")
        models = load_catalog(catalog) if catalog is not None else Catalog()
        path, label = _resolve_trace(trace)
        bench_input = load_bench_input(path, models, name=label, seed=seed)
        budget = gpu_memory_budget if gpu_memory_budget is not None else None
        curves: dict[str, list[CurvePoint]] | None = None
        budget_curves: dict[str, list[CurvePoint]] | None = None
        with _progress(bench_input) as advance:
            results = run_bench(bench_input, names, budget_gb=budget, progress=advance)
            if sweep:
                curves = run_sweep(
                    bench_input, names, budget_gb=budget, done=results, progress=advance
                )
            if budget_sweep:
                budget_curves = run_budget_sweep(
                    bench_input, names, base_gb=budget, progress=advance
                )
        document: dict[str, Any] = bench_document(bench_input, results, budget_gb=budget)
        verdicts = []
        if curves is not None:
            document["sweep"] = curves_json(curves)
            if "prewarm" in results:
                verdicts = matched_verdicts(own_point("prewarm", results["prewarm"]), curves)
                document["matched_memory"] = {v.baseline: verdict_json(v) for v in verdicts}
        if budget_curves is not None:
            document["budget_sweep"] = curves_json(budget_curves)
        warning = serving_check(results)
        if "oracle" in results:
            document["serving_objective"] = {
                "wait_p99_s": SERVING_OBJECTIVE_P99_S,
                "oracle_wait_p99_s": results["oracle"].summary()["wait_p99_s"],
                "met": warning is None,
            }
        if warning is not None:
            typer.echo(f"bench: warning: {warning}", err=True)
        if plot is not None:
            from prewarm.sim.plot import draw_bench

            draw_bench(plot, bench_input, results, curves or budget_curves)
        out.write(document)
        if not out.human:
            return
        rows = [
            [name, *(result.summary()[column] for column in _COLUMNS[1:])]
            for name, result in results.items()
        ]
        title = (
            f"{label}: {bench_input.trace.requests:,} requests, {len(bench_input.trace.models)} "
            f"models, GPU budget {document['gpu_memory_budget_gb']:,.0f} GB"
        )
        print_table(title, _COLUMNS, rows)
        for line in comparison_lines(results):
            typer.echo(line)
        if curves is not None:
            print_table("sweep: each policy at its settings", CURVE_COLUMNS, _curve_rows(curves))
            for matched in verdicts:
                typer.echo(verdict_line(matched))
        if budget_curves is not None:
            print_table(
                "budget sweep: each policy at its own setting",
                CURVE_COLUMNS,
                _curve_rows(budget_curves),
            )
        if plot is not None:
            typer.echo(f"plot: {plot}: {PLOT_MARKERS}")
