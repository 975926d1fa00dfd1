"""``prewarm backtest``: rolling-origin backtest of prewarm's forecaster against simple methods.

Owns: the command's options, the progress bar (stderr), the JSON document
``{"trace", "horizon_s", "methods": {NAME: {mase, mase_median, pinball_p90, coverage_p90,
under_forecast_rate, series}}}`` and the table. Must not: compute anything itself
(``forecaster.backtest`` does) or write a partial file (``write_json`` is atomic, and every input
is validated before anything is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.durations import format_duration
from common.errors import InvalidInput
from forecaster.backtest import METHODS, BacktestResult, run_backtest
from prewarm.cli.forecast_cmd import (
    LabelOption,
    PrometheusOption,
    QueryOption,
    TraceOption,
    horizon_steps,
    load_history,
)
from prewarm.cli.output import print_table, write_json


def backtest_document(name: str, horizon_s: float, result: BacktestResult) -> dict[str, Any]:
    """The JSON contract of ``prewarm backtest --json``."""
    return {
        "trace": name,
        "horizon_s": round(horizon_s),
        "methods": {method: scores.as_dict() for method, scores in result.scores.items()},
    }


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METHODS]
    if not names or unknown:
        raise InvalidInput(
            f"--methods: unknown {unknown or text!r}; choose from {', '.join(METHODS)}"
        )
    return names


def register(app: typer.Typer) -> None:
    """Add ``prewarm backtest`` to ``app``."""

    @app.command("backtest")
    def backtest(
        ctx: typer.Context,
        trace: TraceOption = None,
        prometheus: PrometheusOption = None,
        query: QueryOption = None,
        model_label: LabelOption = None,
        horizon: Annotated[str, typer.Option("--horizon", help="Forecast horizon.")] = "15m",
        json_out: Annotated[
            Path | None,
            typer.Option("--json", help="Write the JSON result to this file ('-' = stdout)."),
        ] = None,
        methods: Annotated[
            str, typer.Option("--methods", help="Comma-separated methods to compare.")
        ] = ",".join(METHODS),
    ) -> None:
        """Backtest over the last part of the history (20%, at most 7 days), every method on the
        same origins. MASE is volume-weighted, scaled by the one-season naive in-sample error
        (a season is a day when the training part spans two days, else one step)."""
        chosen = _methods(methods)
        if json_out is not None and str(json_out) != "-":
            directory = json_out.parent if str(json_out.parent) else Path(".")
            if not directory.is_dir():
                raise InvalidInput(f"--json {json_out}: directory {directory} does not exist")
        batch, name = load_history(
            ctx, trace=trace, prometheus=prometheus, query=query, model_label=model_label
        )
        steps, _seconds = horizon_steps(horizon, batch.step_s)
        console = Console(stderr=True)
        with Progress(
            TextColumn("{task.description:>14}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as progress:
            tasks = {method: progress.add_task(method, total=1.0) for method in chosen}

            def advance(task: str, fraction: float) -> None:
                if task in tasks:
                    progress.update(tasks[task], completed=fraction)

            result = run_backtest(batch, horizon_steps=steps, methods=chosen, progress=advance)
        document = backtest_document(name, steps * batch.step_s, result)
        if json_out is not None:
            write_json(document, None if str(json_out) == "-" else json_out)
            return
        rows = [
            [
                method,
                scores.mase,
                scores.mase_median,
                scores.pinball_p90,
                scores.coverage_p90,
                scores.under_forecast_rate,
                scores.series,
                f"{result.seconds.get(method, 0.0):.1f}",
            ]
            for method, scores in result.scores.items()
        ]
        plan = result.plan
        season = format_duration(plan.season * batch.step_s) if plan.season else "none"
        print_table(
            f"{name}: {format_duration(steps * batch.step_s)} horizon, "
            f"{plan.origins.size} origins in the last "
            f"{format_duration((batch.steps - plan.train_end) * batch.step_s)}, season {season}",
            ["method", "mase", "mase_med", "pin_p90", "cov_p90", "under", "series", "secs"],
            rows,
        )
