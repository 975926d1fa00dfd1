"""``prewarm demo``: the loop on a bundled real trace with daily spikes, locally.

``--json PATH|-`` (:mod:`prewarm.cli.output`) writes the report's JSON (the same document as
``report.json``); with ``-`` the live view and the text report go to stderr, so stdout is JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.errors import InvalidInput
from prewarm.cli.output import JsonCommand, JsonOption, JsonOutput


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to ``app``."""
    app.command(name="demo", cls=JsonCommand)(demo)


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
    json_out: JsonOption = None,
) -> None:
    """Watch prewarm meet a real trace's spikes with weights loaded before them, on this machine.

    The largest spikes of the trace's last day are replayed through the daemon's decision cycle
    and one real GPU agent process per node (GPU memory when there is a GPU, host memory when
    not); the report draws each spike's timeline: forecast, Preload, weights resident, first
    request, and the reactive autoscaler's start beside it. Then the whole trace runs through
    the simulator for every policy (prewarm bench). No cluster needed: cluster actions are dry
    runs.
    """
    if not 1 <= spikes <= 12:
        raise InvalidInput(f"--spikes must be between 1 and 12, got {spikes}")
    result = JsonOutput.parse(json_out)
    from prewarm.demo.report import report_document  # heavy imports only for this command
    from prewarm.demo.run import DemoConfig, run_demo

    config = DemoConfig(
        trace=trace, spikes=spikes, out_dir=out, live_view=live, baselines=baselines
    )
    # With --json - stdout carries the JSON alone: the live view and the text go to stderr.
    outcome = run_demo(config, Console(stderr=not result.human))
    result.write(report_document(outcome))
