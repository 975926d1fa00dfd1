"""``prewarm agent``: run the GPU agent (the node DaemonSet's process).

Owns the command's options and wiring settings into :func:`gpu_agent.server.serve`; it must not
hold agent logic.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from prewarm.cli.main import ConfigOption, state


def register(app: typer.Typer) -> None:
    """Add the ``agent`` command to ``app``."""

    @app.command("agent")
    def agent(
        ctx: typer.Context,
        config: ConfigOption = None,
        listen: Annotated[
            str | None, typer.Option("--listen", help="host:port (default: agent.listen).")
        ] = None,
        port_file: Annotated[
            Path | None,
            typer.Option("--port-file", help="Write the bound port here once serving."),
        ] = None,
    ) -> None:
        """Serve the GPU agent (Preload, Evict, Status, Watch, Attach, Release) until SIGTERM.

        A daemon has no single result, so no --json: its logs are its output, JSON lines with
        the global --log-json (prewarm --log-json agent).
        """
        from gpu_agent.server import serve

        agent_config = state(ctx, config).service_logging().agent
        if listen is not None:
            agent_config = agent_config.model_copy(update={"listen": listen})

        def ready(port: int) -> None:
            if port_file is not None:
                tmp = port_file.with_name(port_file.name + ".tmp")
                tmp.write_text(f"{port}\n", encoding="utf-8")
                tmp.replace(port_file)

        asyncio.run(serve(agent_config, on_ready=ready))
