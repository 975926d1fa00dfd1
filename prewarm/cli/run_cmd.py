"""``prewarm run``: the daemon (reads Prometheus, forecasts, plans, acts when leader and active)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from common.errors import InvalidInput
from prewarm.cli.main import ConfigOption, state

_MODES = ("advisory", "active")


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to ``app``."""
    app.command(name="run")(run)


def run(
    ctx: typer.Context,
    config: ConfigOption = None,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="advisory (publish plans only) or active; overrides config."),
    ] = None,
) -> None:
    """Run the prewarm daemon until SIGTERM (settings from --config and PREWARM_ env vars).

    A daemon has no single result, so no --json: its logs are its output, JSON lines with the
    global --log-json (prewarm --log-json run).
    """
    from prewarm.daemon.app import main  # heavy imports only for this command

    settings = state(ctx, config).service_logging()
    if mode is not None:
        if mode not in _MODES:
            raise InvalidInput(f"--mode must be one of {', '.join(_MODES)}, got {mode!r}")
        daemon = settings.daemon.model_copy(update={"mode": mode})
        settings = settings.model_copy(update={"daemon": daemon})
    asyncio.run(main(settings))
