"""``prewarm bench``: replay a trace against prewarm and the policies people use today.

Prints a table (or ``--json``) of cold starts, waits, idle GPU memory and node-hours per policy on
one simulated cluster under one GPU memory budget. ``--sweep`` varies the budget and reports each
policy's curve of cold starts against idle GB-hours; ``--plot`` draws it, with a forecast-vs-actual
panel for the busiest models. Progress goes to stderr: a live bar on a terminal, plain lines
(each policy at each quarter of the trace) in a log or a pipe. Bad input exits 2 before any run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.errors import InvalidInput
from planner.catalog import Catalog, load_catalog
from prewarm.cli.output import print_table, write_json
from prewarm.data import resolve_trace
from prewarm.sim.bench import (
    SWEEP_FACTORS,
    BenchInput,
    bench_document,
    check_policy_names,
    comparison_lines,
    load_bench_input,
    run_bench,
)
from prewarm.sim.engine import SUMMARY_FIELDS, SimResult
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


def _run_with_progress(
    bench: BenchInput, names: list[str], budget_gb: float | None, label: str
) -> dict[str, SimResult]:
    console = Console(stderr=True)
    if not console.is_terminal:
        lines = _LineProgress(bench.trace.ticks, label)
        return run_bench(bench, names, budget_gb=budget_gb, progress=lines.advance)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks = {
            name: progress.add_task(f"{label}{name}", total=bench.trace.ticks) for name in names
        }

        def advance(name: str, ticks: int) -> None:
            progress.advance(tasks[name], ticks)

        return run_bench(bench, names, budget_gb=budget_gb, progress=advance)


def _sweep(
    bench: BenchInput, names: list[str], base_gb: float
) -> dict[str, list[dict[str, float]]]:
    curves: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for factor in SWEEP_FACTORS:
        budget = base_gb * factor
        results = _run_with_progress(bench, names, budget, f"{budget:,.0f} GB ")
        for name, result in results.items():
            summary = result.summary()
            curves[name].append(
                {
                    "gpu_memory_budget_gb": budget,
                    "cold_start_ratio": summary["cold_start_ratio"],
                    "idle_gpu_gb_hours": summary["idle_gpu_gb_hours"],
                }
            )
    return curves


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the CLI."""

    @app.command("bench")
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
            bool, typer.Option("--sweep", help="Vary the budget; report cold starts vs idle GB-h.")
        ] = False,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Write the JSON document here ('-': stdout).")
        ] = None,
        plot: Annotated[
            Path | None, typer.Option("--plot", help="Draw the sweep and forecasts to a PNG.")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of arrivals and delays.")] = 0,
    ) -> None:
        """Replay a trace against each policy on one simulated GPU cluster."""
        names = check_policy_names([n.strip() for n in policies.split(",") if n.strip()])
        if gpu_memory_budget is not None and not gpu_memory_budget > 0:
            raise InvalidInput(f"--gpu-memory-budget must be > 0 GB, got {gpu_memory_budget}")
        if plot is not None and not plot.parent.resolve().is_dir():
            raise InvalidInput(f"cannot write {plot}: its directory does not exist")
        models = load_catalog(catalog) if catalog is not None else Catalog()
        path, label = _resolve_trace(trace)
        bench_input = load_bench_input(path, models, name=label, seed=seed)
        budget = gpu_memory_budget if gpu_memory_budget is not None else None
        results = _run_with_progress(bench_input, names, budget, "")
        document: dict[str, Any] = bench_document(bench_input, results)
        base = budget if budget is not None else bench_input.default_budget_gb
        curves = _sweep(bench_input, names, base) if sweep else None
        if curves is not None:
            document["sweep"] = curves
        if plot is not None:
            from prewarm.sim.plot import draw_bench

            draw_bench(plot, bench_input, results, curves)
        if json_out is not None:
            write_json(document, None if str(json_out) == "-" else json_out)
            if str(json_out) == "-":
                return
        rows = [
            [name, *(result.summary()[column] for column in _COLUMNS[1:])]
            for name, result in results.items()
        ]
        title = (
            f"{label}: {bench_input.trace.requests:,} requests, {len(bench_input.trace.models)} "
            f"models, GPU budget {base:,.0f} GB"
        )
        print_table(title, _COLUMNS, rows)
        for line in comparison_lines(results):
            typer.echo(line)
        if curves is not None:
            sweep_rows = [
                [
                    name,
                    point["gpu_memory_budget_gb"],
                    point["cold_start_ratio"],
                    point["idle_gpu_gb_hours"],
                ]
                for name, points in curves.items()
                for point in points
            ]
            print_table(
                "budget sweep",
                ("policy", "gpu_memory_budget_gb", "cold_start_ratio", "idle_gpu_gb_hours"),
                sweep_rows,
            )
