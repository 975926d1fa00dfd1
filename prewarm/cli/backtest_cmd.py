"""``prewarm backtest``: rolling-origin backtest of prewarm's forecaster against simple methods.

Owns: the command's options, the progress report on stderr (a rich bar with an ETA on a
terminal; otherwise plain lines, at most one per :data:`PLAIN_EVERY_S` per method and none for a
run shorter than that, so logs and ``--json -`` pipelines stay clean), the JSON document and the
tables (``--json PATH|-`` as every command, :mod:`prewarm.cli.output`). JSON::

    {"trace", "horizon_s",
     "methods": {NAME: {mase, mase_median, pinball_p90, coverage_p90, under_forecast_rate,
                        series, spike_recall_1m, spike_recall_5m, spike_recall_15m,
                        false_spike_rate, peak_error, spikes}},
     "history": [{"history_s", "origins", "methods": {"prewarm": {...}, "naive": {...}},
                  "mase_ratio_vs_naive", "pinball_ratio_vs_naive", "beats_naive"}],
     "notes": [TEXT]}

(``history`` only with ``--history``; the pre-warming metrics are defined in
:mod:`forecaster.prewarm_metrics`; notes: a season the history cannot hold, a baseline not run,
series a baseline could not fit). By default every method runs; without the optional
``prewarm[baselines]`` extra (statsforecast) the statsforecast baselines are left out, with a
note. Must not: compute anything itself (``forecaster.backtest``
does) or write a partial file (``write_json`` is atomic, and every input is validated before
anything is written).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from common.durations import format_duration, parse_duration_s
from common.errors import InvalidInput
from forecaster import baselines
from forecaster.backtest import (
    METHODS,
    NAIVE,
    PREWARM,
    BacktestResult,
    plan_backtest,
    run_backtest,
)
from forecaster.backtest import (
    Progress as ProgressCallback,
)
from prewarm.cli.forecast_cmd import (
    LabelOption,
    PrometheusOption,
    QueryOption,
    TraceOption,
    horizon_steps,
    load_history,
)
from prewarm.cli.output import JsonCommand, JsonOption, JsonOutput, print_table
from prewarm.cli.progress import PlainProgress


def method_document(result: BacktestResult, method: str) -> dict[str, Any]:
    """One method's scores: the accuracy metrics, then the pre-warming metrics."""
    out: dict[str, Any] = dict(result.scores[method].as_dict())
    if method in result.prewarming:
        out.update(result.prewarming[method].as_dict())
    return out


def history_document(history_s: float, result: BacktestResult) -> dict[str, Any]:
    """One ``--history`` length: prewarm and the naive on the same origins, and their ratio."""
    mase = _ratio(result, "mase")
    pinball = _ratio(result, "pinball_p90")
    return {
        "history_s": round(history_s),
        "origins": int(result.plan.origins.size),
        "methods": {method: method_document(result, method) for method in result.scores},
        "mase_ratio_vs_naive": mase,
        "pinball_ratio_vs_naive": pinball,
        "beats_naive": mase is not None and mase < 1.0,
    }


def _ratio(result: BacktestResult, metric: str) -> float | None:
    if PREWARM not in result.scores or NAIVE not in result.scores:
        return None
    ours = float(getattr(result.scores[PREWARM], metric))
    theirs = float(getattr(result.scores[NAIVE], metric))
    if not (math.isfinite(ours) and math.isfinite(theirs)) or theirs <= 0:
        return None
    return ours / theirs


def backtest_document(
    name: str,
    horizon_s: float,
    result: BacktestResult,
    histories: list[tuple[float, BacktestResult]] | None = None,
) -> dict[str, Any]:
    """The JSON contract of ``prewarm backtest --json`` (see the module docstring)."""
    document: dict[str, Any] = {
        "trace": name,
        "horizon_s": round(horizon_s),
        "methods": {method: method_document(result, method) for method in result.scores},
        "notes": list(result.notes),
    }
    if histories:
        document["history"] = [history_document(s, r) for s, r in histories]
    return document


def default_methods() -> tuple[tuple[str, ...], list[str]]:
    """Every method whose dependencies are installed, and a note for those left out."""
    if baselines.available():
        return METHODS, []
    chosen = tuple(name for name in METHODS if name not in baselines.NAMES)
    return chosen, [f"{', '.join(baselines.NAMES)} not run: {baselines.INSTALL_HINT}"]


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METHODS]
    if not names or unknown:
        raise InvalidInput(
            f"--methods: unknown {unknown or text!r}; choose from {', '.join(METHODS)}"
        )
    return names


def parse_histories(text: str | None) -> tuple[float, ...]:
    """``--history 6h,12h,24h`` in seconds; one :class:`InvalidInput` naming the bad part."""
    if text is None:
        return ()
    out = []
    for part in (item.strip() for item in text.split(",")):
        try:
            seconds = parse_duration_s(part)
        except InvalidInput as error:
            raise InvalidInput(f"--history {text!r}: {error}") from None
        if seconds <= 0:
            raise InvalidInput(f"--history {text!r}: {part!r} must be longer than zero")
        out.append(seconds)
    return tuple(out)


@contextmanager
def _progress(tasks: list[str]) -> Iterator[ProgressCallback]:
    console = Console(stderr=True)
    if not console.is_terminal:
        yield PlainProgress(sys.stderr)
        return
    with Progress(
        TextColumn("{task.description:>22}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        ids = {task: bar.add_task(task, total=1.0) for task in tasks}

        def advance(task: str, fraction: float) -> None:
            if task in ids:
                bar.update(ids[task], completed=fraction)

        yield advance


def _labelled(progress: ProgressCallback, label: str) -> ProgressCallback:
    def report(task: str, fraction: float) -> None:
        progress(f"{task} ({label})", fraction)

    return report


def register(app: typer.Typer) -> None:
    """Add ``prewarm backtest`` to ``app``."""

    @app.command("backtest", cls=JsonCommand)
    def backtest(
        ctx: typer.Context,
        trace: TraceOption = None,
        prometheus: PrometheusOption = None,
        query: QueryOption = None,
        model_label: LabelOption = None,
        horizon: Annotated[str, typer.Option("--horizon", help="Forecast horizon.")] = "15m",
        json_out: JsonOption = None,
        methods: Annotated[
            str | None,
            typer.Option(
                "--methods",
                help=f"Comma-separated methods to compare (default: all: {','.join(METHODS)}).",
            ),
        ] = None,
        max_origins: Annotated[
            int | None,
            typer.Option(
                "--max-origins",
                min=1,
                help="Most origins per series, evenly spread (default 400; 32 per --history "
                "length).",
            ),
        ] = None,
        history: Annotated[
            str | None,
            typer.Option(
                "--history",
                help="Also backtest with only this much history per origin (comma-separated "
                "durations, e.g. 6h,12h,24h): prewarm against the last-value naive.",
            ),
        ] = None,
    ) -> None:
        """Score prewarm's forecaster against simple methods on the history's last part.

        The backtest covers the last part of the history (20%, at most 7 days), every method on
        the same origins (at most 400, evenly spread; 32 per --history length). MASE is
        volume-weighted, scaled by the one-season naive in-sample error (a season is a day when
        the training part spans two days, else one step). Pre-warming metrics: spike recall at
        1, 5 and 15 min lead, false-spike rate, 5-minute peak error.
        """
        chosen, left_out = default_methods() if methods is None else (_methods(methods), [])
        lengths = parse_histories(history)
        out = JsonOutput.parse(json_out)
        batch, name = load_history(
            ctx, trace=trace, prometheus=prometheus, query=query, model_label=model_label
        )
        steps, _seconds = horizon_steps(horizon, batch.step_s)
        plans = [
            (
                s,
                plan_backtest(
                    batch,
                    horizon_steps=steps,
                    history_steps=round(s / batch.step_s),
                    max_origins=max_origins,
                ),
            )
            for s in lengths
        ]
        labels = [format_duration(s) for s in lengths]
        tasks = [*chosen] + [f"{m} ({label})" for label in labels for m in (PREWARM, NAIVE)]
        with _progress(tasks) as progress:
            plan = plan_backtest(batch, horizon_steps=steps, max_origins=max_origins)
            result = run_backtest(
                batch, horizon_steps=steps, methods=chosen, progress=progress, plan=plan
            )
            histories = [
                (
                    s,
                    run_backtest(
                        batch, horizon_steps=steps, plan=p, progress=_labelled(progress, label)
                    ),
                )
                for (s, p), label in zip(plans, labels, strict=True)
            ]
        result.notes[:0] = left_out
        document = backtest_document(name, steps * batch.step_s, result, histories)
        out.write(document)
        if not out.human:
            return
        _print_tables(name, batch.steps, batch.step_s, steps, result, histories)
        _print_notes(result)


def _cell(value: float | None) -> float | str:
    return "-" if value is None else value


def _print_tables(
    name: str,
    total_steps: int,
    step_s: float,
    steps: int,
    result: BacktestResult,
    histories: list[tuple[float, BacktestResult]],
) -> None:
    rows = []
    for method, scores in result.scores.items():
        warm = result.prewarming[method]
        rows.append(
            [
                method,
                scores.mase,
                scores.mase_median,
                scores.pinball_p90,
                scores.coverage_p90,
                scores.under_forecast_rate,
                scores.series,
                *(_cell(value) for value in warm.spike_recall.values()),
                _cell(warm.false_spike_rate),
                _cell(warm.peak_error),
                f"{result.seconds.get(method, 0.0):.1f}",
            ]
        )
    plan = result.plan
    season = format_duration(plan.season * step_s) if plan.season else "none"
    print_table(
        f"{name}: {format_duration(steps * step_s)} horizon, "
        f"{plan.origins.size} origins in the last "
        f"{format_duration((total_steps - plan.train_end) * step_s)}, season {season}",
        [
            "method",
            "mase",
            "mase_med",
            "pin_p90",
            "cov_p90",
            "under",
            "series",
            "rec_1m",
            "rec_5m",
            "rec_15m",
            "false_sp",
            "peak_err",
            "secs",
        ],
        rows,
    )
    if not histories:
        return
    history_rows = []
    for seconds, part in histories:
        entry = history_document(seconds, part)
        history_rows.append(
            [
                format_duration(seconds),
                entry["origins"],
                part.scores[PREWARM].mase if PREWARM in part.scores else "-",
                part.scores[NAIVE].mase if NAIVE in part.scores else "-",
                _cell(entry["mase_ratio_vs_naive"]),
                _cell(entry["pinball_ratio_vs_naive"]),
                "yes" if entry["beats_naive"] else "NO",
            ]
        )
    print_table(
        f"{name}: short histories (each origin sees at most this much), prewarm vs last-value "
        "naive",
        ["history", "origins", "mase", "naive_mase", "mase_ratio", "pin_ratio", "beats"],
        history_rows,
    )


def _print_notes(result: BacktestResult) -> None:
    console = Console()
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
