"""``prewarm up``: a local, real stack to try the daemon on one machine, no cluster needed.

Owns: the command's options and the one-time build offer. Must not: start anything itself
(:mod:`prewarm.up.stack` does).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from common.durations import parse_duration_s
from common.errors import FailedPrecondition, InvalidInput


def register(app: typer.Typer) -> None:
    """Add the ``up`` command to ``app``."""
    app.command(name="up", help=HELP)(up)


HELP = (
    "Run a local, real stack and the daemon on it, until Ctrl-C (or --duration).\n\n"
    "Starts Prometheus (the trace's history backfilled, then live samples from a traffic "
    "generator replaying it), etcd + kube-apiserver + kwok with GPU nodes in one or two pools, "
    "one real `prewarm agent` per node (host memory without a GPU), a serving Deployment per "
    "model (labelled prewarm.io/model), and the daemon in active mode with its control API on "
    "127.0.0.1 behind a generated token. It prints the addresses and the `prewarm plan`, "
    "`explain` and `warm` commands to try, then each preload and replica floor as it lands.\n\n"
    "It uses the components the tests use: ./hack/testenv.sh builds them once (about 30 minutes "
    "on 2 cores; --build runs it)."
)


def _echo(line: str) -> None:
    typer.echo(line)


def up(
    trace: Annotated[
        str,
        typer.Option("--trace", help="Trace replayed as live traffic: builtin:NAME or a CSV path."),
    ] = "builtin:servegen-spiky-14d",
    duration: Annotated[
        str | None,
        typer.Option(
            "--duration",
            help="Replay this much trace time (e.g. 10m, 2h), then stop. Default: until Ctrl-C.",
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option("--speed", help="Trace seconds per wall second (1 = real time)."),
    ] = 10.0,
    state_dir: Annotated[
        Path,
        typer.Option("--dir", help="State directory: settings, tokens, data and logs."),
    ] = Path("~/.cache/prewarm-up"),
    nodes_per_pool: Annotated[
        int, typer.Option("--nodes-per-pool", help="kwok GPU nodes (one agent each) per pool.")
    ] = 1,
    tick: Annotated[str, typer.Option("--tick", help="The daemon's tick, in trace time.")] = "60s",
    build: Annotated[
        bool,
        typer.Option(
            "--build", help="Build the missing components first (runs ./hack/testenv.sh, once)."
        ),
    ] = False,
) -> None:
    """``prewarm up`` (see :data:`HELP`)."""
    from prewarm.up import stack, testenv  # heavy imports only for this command

    try:
        testenv.stack_binaries()
    except testenv.MissingComponents as missing:
        if not build or missing.script is None:
            raise
        typer.echo(f"{missing}\nbuilding now: {missing.script} ({testenv.BUILD_TIME})", err=True)
        done = subprocess.run([str(missing.script)], cwd=missing.script.parents[1], check=False)
        if done.returncode != 0:
            raise FailedPrecondition(
                f"{missing.script} failed (exit {done.returncode}); see its output above"
            ) from None
    duration_s = parse_duration_s(duration) if duration is not None else None
    tick_s = parse_duration_s(tick)
    if tick_s <= 0:
        raise InvalidInput(f"--tick must be a positive duration, e.g. 60s; got {tick!r}")
    config = stack.UpConfig(
        trace=trace,
        state_dir=state_dir.expanduser(),
        speed=speed,
        duration_s=duration_s,
        tick_s=tick_s,
        nodes_per_pool=nodes_per_pool,
    )
    stack.run_up(config, out=_echo)
