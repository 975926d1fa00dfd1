"""``prewarm forecast``: per-model demand forecasts from a trace file or Prometheus.

Owns: the history options shared with ``prewarm backtest`` (``--trace`` or ``--prometheus`` with
``--query`` / ``--model-label``), reading that history, and printing forecasts (a table of each
model's mean, p50 and p90 peaks and P(any request) for people; ``--json PATH|-`` for scripts, see
:mod:`prewarm.cli.output`). Must not: hold forecasting logic (``forecaster.engine``) or map
errors to exit codes (``prewarm.cli.main`` does: bad input exits 2, nothing written).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from common.durations import format_duration, parse_duration_s
from common.errors import InvalidInput
from forecaster.config import PrometheusSourceConfig
from forecaster.demand import CUSTOM
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from forecaster.sources.trace import read_trace
from forecaster.types import Forecast, SeriesBatch
from prewarm.cli.main import state
from prewarm.cli.output import JsonCommand, JsonOption, JsonOutput, print_table
from prewarm.data import resolve_trace

TraceOption = Annotated[
    str | None,
    typer.Option(
        "--trace",
        help="Trace CSV (timestamp,model[,requests]) or builtin:NAME.",
        show_default=False,
    ),
]
PrometheusOption = Annotated[
    str | None,
    typer.Option(
        "--prometheus", help="Prometheus base URL (instead of --trace).", show_default=False
    ),
]
QueryOption = Annotated[
    str | None,
    typer.Option(
        "--query",
        help="PromQL giving requests/s per model (default: forecaster.prometheus.query).",
        show_default=False,
    ),
]
LabelOption = Annotated[
    str | None,
    typer.Option("--model-label", help="Label carrying the model id.", show_default=False),
]


def load_history(
    ctx: typer.Context,
    *,
    trace: str | None,
    prometheus: str | None,
    query: str | None,
    model_label: str | None,
    now_s: float | None = None,
) -> tuple[SeriesBatch, str]:
    """The history a command works on, and a name for it (the trace spec or the URL).

    Exactly one of ``trace`` and ``prometheus`` must be given. Prometheus history covers the
    configured window (``forecaster.history_window_s``) up to ``now_s`` (default: the clock).
    """
    if (trace is None) == (prometheus is None):
        raise InvalidInput("give exactly one of --trace FILE and --prometheus URL")
    if trace is not None:
        path = resolve_trace(trace)
        return read_trace(path), trace
    assert prometheus is not None
    settings = state(ctx).settings().forecaster
    updates: dict[str, Any] = {"url": prometheus}
    if query is not None:
        # A query of one's own replaces whatever demand the settings describe (a preset, or
        # several queries): it is the custom preset.
        updates.update(query=query, preset=CUSTOM, queries=[])
    if model_label is not None:
        updates["model_label"] = model_label
    config = PrometheusSourceConfig.model_validate({**settings.prometheus.model_dump(), **updates})
    source = PrometheusSource(config, history_window_s=settings.history_window_s)
    now = time.time() if now_s is None else now_s
    batch = source.fetch(start_s=now - settings.history_window_s, end_s=now)
    if not batch.models:
        what = f"query {config.query!r}" if config.preset == CUSTOM else f"preset {config.preset!r}"
        if config.queries:
            what = f"{len(config.queries)} queries"
        raise InvalidInput(
            f"{what} returned no series with a model label from {prometheus} (docs/demand.md)"
        )
    return batch, prometheus


def horizon_steps(horizon: str, step_s: float) -> tuple[int, float]:
    """Steps covering ``horizon`` (rounded up) and the horizon in seconds."""
    seconds = parse_duration_s(horizon)
    if seconds <= 0:
        raise InvalidInput(f"--horizon must be > 0, got {horizon!r}")
    return max(1, math.ceil(seconds / step_s - 1e-9)), seconds


def forecast_document(
    source: str, forecasts: dict[Any, Forecast], *, horizon_s: float
) -> dict[str, Any]:
    """The ``--json`` document of ``prewarm forecast``: per model, the mean and each quantile per
    step, P(active) per step and P(any request within the horizon)."""
    any_forecast = next(iter(forecasts.values()), None)
    start = any_forecast.start_s if any_forecast is not None else 0.0
    models: dict[str, Any] = {}
    for model, forecast in sorted(forecasts.items()):
        models[str(model)] = {
            "method": forecast.method,
            "stale": forecast.stale,
            "mean": [round(float(v), 4) for v in forecast.mean],
            "quantiles": {
                f"p{round(level * 100):d}": [round(float(v), 4) for v in forecast.quantile(level)]
                for level in forecast.quantiles
            },
            "p_active": [round(float(v), 4) for v in forecast.p_active],
            "p_any_within_horizon": round(forecast.p_any_within(forecast.horizon), 4),
        }
    return {
        "source": source,
        "start": datetime.fromtimestamp(start, tz=UTC).isoformat().replace("+00:00", "Z"),
        "step_s": any_forecast.step_s if any_forecast is not None else None,
        "horizon_s": int(horizon_s),
        "unit": "requests per step",
        "models": models,
    }


def register(app: typer.Typer) -> None:
    """Add ``prewarm forecast`` to ``app``."""

    @app.command("forecast", cls=JsonCommand)
    def forecast(
        ctx: typer.Context,
        trace: TraceOption = None,
        prometheus: PrometheusOption = None,
        query: QueryOption = None,
        model_label: LabelOption = None,
        horizon: Annotated[str, typer.Option("--horizon", help="How far ahead, e.g. 30m.")] = "30m",
        json_out: JsonOption = None,
        server: Annotated[
            str | None,
            typer.Option(
                "--server",
                help="Ask a running daemon's control API (host:port) instead; needs --model.",
                show_default=False,
            ),
        ] = None,
        model: Annotated[
            str | None, typer.Option("--model", help="The model to ask the daemon about.")
        ] = None,
    ) -> None:
        """Forecast every model's requests per step: mean, p50 and p90 peaks, P(any request).

        The table shows, per model, the mean forecast over the horizon, the highest p50 and p90
        (the planning quantile) of any step, and the probability of at least one request within
        the horizon; --json has every step.
        """
        out = JsonOutput.parse(json_out)
        if server is not None:
            if model is None:
                raise InvalidInput("--server needs --model NAME (the daemon forecasts per model)")
            if trace is not None or prometheus is not None:
                raise InvalidInput("give --server, or --trace / --prometheus, not both")
            _, seconds = horizon_steps(horizon, 1.0)
            from prewarm.control.client import fetch_forecast

            daemon_forecast = fetch_forecast(server, model, horizon_s=seconds)
            forecasts = {daemon_forecast.model: daemon_forecast}
            out.write(forecast_document(server, forecasts, horizon_s=seconds))
            if out.human:
                _print(server, forecasts, seconds=seconds, step_s=daemon_forecast.step_s, level=0.9)
            return
        batch, source = load_history(
            ctx, trace=trace, prometheus=prometheus, query=query, model_label=model_label
        )
        steps, seconds = horizon_steps(horizon, batch.step_s)
        planning = state(ctx).settings().forecaster.planning_quantile
        levels = tuple(sorted({0.5, planning}))
        engine = AutoForecaster(step_s=batch.step_s, planning_quantile=planning)
        engine.observe(batch)
        forecasts = engine.forecast(horizon_steps=steps, quantiles=levels)
        out.write(forecast_document(source, forecasts, horizon_s=seconds))
        if out.human:
            _print(source, forecasts, seconds=seconds, step_s=batch.step_s, level=planning)


def _peak(forecast: Forecast, level: float) -> float:
    """The highest forecast at quantile ``level`` over the horizon (NaN when not forecast).

    Levels match within 1e-6: a daemon's forecast arrives over gRPC with float32 levels.
    """
    for row, have in enumerate(forecast.quantiles):
        if abs(have - level) < 1e-6:
            return float(forecast.values[row].max())
    return math.nan


def _print(
    source: str, forecasts: dict[Any, Forecast], *, seconds: float, step_s: float, level: float
) -> None:
    levels = sorted({0.5, level})
    rows = [
        [
            str(name),
            item.method,
            float(item.mean.mean()),
            *(_peak(item, q) for q in levels),
            item.p_any_within(item.horizon),
        ]
        for name, item in sorted(forecasts.items())
    ]
    print_table(
        f"{source}: next {format_duration(seconds)} (requests per {format_duration(step_s)})",
        ["model", "method", "mean", *(f"p{round(q * 100)} peak" for q in levels), "P(any)"],
        rows,
    )
