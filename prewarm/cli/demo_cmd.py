"""``prewarm demo``: the loop on a bundled real trace with daily spikes, locally."""

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
        str,
        typer.Option("--trace", help="A trace of two days or more: builtin:NAME or a CSV path."),
    ] = "builtin:servegen-spiky-14d",
    spikes: Annotated[
        int, typer.Option("--spikes", help="Spikes of the trace's last day to follow.")
    ] = 4,
    out: Annotated[Path, typer.Option("--out", help="Directory for the report.")] = Path(
        "demo-report"
    ),
    live: Annotated[bool, typer.Option("--live/--no-live", help="Show the live view.")] = True,
    baselines: Annotated[
        bool,
        typer.Option("--baselines/--no-baselines", help="Compare with the other policies."),
    ] = True,
) -> None:
    """Replay the largest spikes of a real trace's last day through the daemon's decision cycle
    and one real GPU agent process per node (GPU memory when there is a GPU, host memory when
    not), and draw each spike's timeline: forecast, Preload, weights resident, first request, and
    the reactive autoscaler's start beside it. No cluster needed: cluster actions are dry runs."""
    from prewarm.demo.run import DemoConfig, run_demo  # heavy imports only for this command

    if not 1 <= spikes <= 12:
        raise InvalidInput(f"--spikes must be between 1 and 12, got {spikes}")
    config = DemoConfig(
        trace=trace, spikes=spikes, out_dir=out, live_view=live, baselines=baselines
    )
    run_demo(config, Console())
