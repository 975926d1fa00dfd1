"""Entry point of the ``prewarm`` CLI.

Each command lives in its own module under ``prewarm.cli`` and exposes ``register(app)``; add the
module to ``COMMAND_MODULES`` to make it appear. Errors are turned into exit codes here and only
here: :class:`InvalidInput` (bad input, config or trace) exits 2, any other
:class:`PrewarmError` exits 1; both print one line starting ``prewarm: error:`` on stderr (a
message of several lines is joined into one). Every command with a result takes ``--json PATH|-``
(:mod:`prewarm.cli.output`); ``--help`` reads as :mod:`prewarm.cli.help_format` makes it.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from common.errors import InvalidInput, PrewarmError
from prewarm import __version__
from prewarm.cli.help_format import flags_without_type, tidy_help
from prewarm.logging import configure_logging
from prewarm.settings import Settings, load_settings

COMMAND_MODULES: tuple[str, ...] = (
    "prewarm.cli.agent_cmd",
    "prewarm.cli.handoff_cmd",
    "prewarm.cli.control_cmd",
    "prewarm.cli.forecast_cmd",
    "prewarm.cli.backtest_cmd",
    "prewarm.cli.run_cmd",
    "prewarm.cli.demo_cmd",
    "prewarm.cli.bench_cmd",
    "prewarm.cli.dashboards_cmd",
    "prewarm.cli.up_cmd",
)
"""Modules under ``prewarm.cli`` that define ``register(app: typer.Typer) -> None``."""

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1

EPILOG = (
    "Results: a table for people; --json PATH also writes the result as JSON to PATH, and "
    "--json - writes only the JSON, to stdout (forecast, backtest, bench, demo, the control "
    "verbs, handoff wait and path). The daemons (run, agent) log JSON lines with --log-json. "
    "Bad input exits 2 with one line: prewarm: error: ..."
)

app = typer.Typer(
    name="prewarm",
    help="Predictive pre-warming for ML model serving on Kubernetes.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class CliState:
    """What the global options decided; commands reach it through ``ctx.obj``."""

    config_path: Path | None = None
    log_level: str | None = None
    log_json: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """The settings tree (YAML from ``--config`` plus ``PREWARM_`` env), loaded once."""
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    def service_logging(self) -> Settings:
        """The settings, with logging re-configured from their ``logging`` section for a
        long-running process (``run``, ``agent``): ``logging.level`` (default info) and
        ``logging.json_format``, unless ``--log-level`` / ``--log-json`` were given."""
        settings = self.settings()
        config = settings.logging
        configure_logging(
            self.log_level or config.level,
            json_format=self.log_json or config.json_format,
            retry_summary_s=config.retry_summary_s,
        )
        return settings


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings YAML (the same as the global --config, given after the verb).",
        metavar="PATH",
    ),
]
"""A verb's own ``--config``, for the verbs that read settings: ``prewarm run --config x.yaml``."""


def state(ctx: typer.Context, config: Path | None = None) -> CliState:
    """The :class:`CliState` of the running invocation; ``config`` (a verb's own ``--config``)
    replaces the global one."""
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        ctx.find_root().obj = obj
    if config is not None:
        obj.config_path = config
        obj._settings = None
    return obj


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prewarm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Settings YAML.", envvar="PREWARM_CONFIG"),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            help="debug, info, warning or error (default: warning; for run and agent, "
            "logging.level, info unless set).",
        ),
    ] = None,
    log_json: Annotated[
        bool,
        typer.Option(
            "--log-json",
            help="Logs as JSON lines, every field (default: one console line per event; for run "
            "and agent, logging.json_format).",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    """Predictive pre-warming for ML model serving on Kubernetes."""
    configure_logging(log_level or "warning", json_format=log_json)
    ctx.obj = CliState(config_path=config, log_level=log_level, log_json=log_json)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(app)


_register_commands()
tidy_help(app)
flags_without_type()


def fail(message: str, *, code: int) -> None:
    """Print ``prewarm: error: <message>`` on stderr, on one line, and exit with ``code``."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    sys.stderr.write(f"prewarm: error: {line}\n")
    raise SystemExit(code)


def run() -> None:
    """Console-script entry point: run the app, mapping prewarm errors to exit codes."""
    try:
        app()
    except InvalidInput as error:
        fail(str(error), code=EXIT_BAD_INPUT)
    except PrewarmError as error:
        fail(str(error), code=EXIT_FAILURE)
    except KeyboardInterrupt:
        fail("interrupted", code=130)


if __name__ == "__main__":
    run()
