"""``prewarm demo``: the whole loop on a bundled real trace, locally, in about a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.errors import InvalidInput


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
    app.command(name="demo")(demo)


def demo(
    trace: Annotated[
        str, typer.Option("--trace", help="A 1-minute trace: builtin:NAME or a CSV path.")
    ] = "builtin:azure-functions-2019-100fn",
    models: Annotated[int, typer.Option("--models", help="Models of the trace to run.")] = 12,
    minutes: Annotated[int, typer.Option("--minutes", help="Minutes replayed live.")] = 90,
    out: Annotated[Path, typer.Option("--out", help="Directory for the report.")] = Path(
        "demo-report"
    ),
    live: Annotated[bool, typer.Option("--live/--no-live", help="Show the live view.")] = True,
    baselines: Annotated[
        bool,
        typer.Option("--baselines/--no-baselines", help="Compare with the other policies."),
    ] = True,
) -> None:
    """Replay a real trace through the forecaster, the planner and a real GPU agent process
    (GPU memory when there is a GPU, host memory when not), then report forecast vs actual and
    cold starts against the baselines. No cluster needed: cluster actions are dry runs."""
    from prewarm.demo.run import DemoConfig, run_demo  # heavy imports only for this command

    if not 1 <= models <= 200:
        raise InvalidInput(f"--models must be between 1 and 200, got {models}")
    if not 10 <= minutes <= 1440:
        raise InvalidInput(f"--minutes must be between 10 and 1440, got {minutes}")
    config = DemoConfig(
        trace=trace, models=models, live_minutes=minutes, out_dir=out, live_view=live,
        baselines=baselines,
    )  # fmt: skip
    run_demo(config, Console())
