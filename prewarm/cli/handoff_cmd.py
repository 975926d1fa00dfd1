"""``prewarm handoff wait | hold | path``: what a serving pod runs so its engine starts warm.

Owns the commands' options and output; the work is :mod:`gpu_agent.handoff`'s (torch-free, so
the daemon image can be the init container's). ``wait`` is a pod's init container: it prints the
model's read-only directory on the node once the agent holds it, or, after ``--timeout``, one line
saying the engine falls back to its normal download, and exits 0 either way (2: bad arguments,
1: the agent refused the token). ``hold`` is a native sidecar (an init container with
``restartPolicy: Always``): it keeps a lease on the model for the pod's life. ``path`` prints the
stable ``.../current`` path of a model id, for pod specs. ``wait`` and ``path`` take
``--json PATH|-`` (:mod:`prewarm.cli.output`): with ``-`` stdout carries the JSON instead of the
path. See docs/engines.md.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from common.durations import parse_duration_s
from common.errors import InvalidInput
from prewarm.cli.output import JsonCommand, JsonOption, JsonOutput

if TYPE_CHECKING:
    from gpu_agent.handoff import AgentChannel

AgentOption = Annotated[
    str | None,
    typer.Option(
        "--agent",
        help="The node agent's host:port (default: $PREWARM_AGENT_ADDRESS, else 127.0.0.1:50061).",
    ),
]
ModelOption = Annotated[str, typer.Option("--model", help="The model id (as in the catalog).")]
TokenOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file", help="Bearer token for the agent (default: $PREWARM_AGENT_TOKEN, if set)."
    ),
]


def _agent_address(agent: str | None) -> str:
    from gpu_agent.handoff import AGENT_ENV, DEFAULT_AGENT

    address = agent or os.environ.get(AGENT_ENV) or DEFAULT_AGENT
    if ":" not in address:
        raise InvalidInput(f"--agent {address!r} must be host:port, e.g. 127.0.0.1:50061")
    return address


def _token(token_file: Path | None) -> str | None:
    from gpu_agent.handoff import TOKEN_ENV

    if token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise InvalidInput(f"cannot read --token-file {token_file}: {error.strerror}") from error
    if not token:
        raise InvalidInput(f"--token-file {token_file} is empty")
    return token


def _seconds(text: str, option: str) -> float:
    try:
        return parse_duration_s(text)
    except InvalidInput as error:
        raise InvalidInput(f"{option}: {error}") from None


def _write(path: Path, value: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(value + "\n", encoding="utf-8")
    tmp.replace(path)


def _yield(channel: AgentChannel, model: str, *, gpus: tuple[str, ...], hold_s: float) -> None:
    """YieldGpu for a replica of ``model`` starting; one line on stderr says what happened."""
    from gpu_agent.handoff import yield_gpu

    done = yield_gpu(channel, reason=f"replica of {model} starting", gpu_uuids=gpus,
                     hold_s=hold_s)  # fmt: skip
    if done.error:
        sys.stderr.write(
            f"prewarm handoff: could not ask the agent to yield GPU memory ({done.error}); "
            "the engine starts anyway\n"
        )
    elif done.gpu_uuids:
        sys.stderr.write(
            f"prewarm handoff: the agent yielded {', '.join(done.gpu_uuids)} "
            f"({done.freed_bytes} bytes freed; to host memory: {len(done.demoted)} model(s), "
            f"to disk: {len(done.on_disk)})\n"
        )


def register(app: typer.Typer) -> None:
    """Add the ``handoff`` command group to ``app``."""
    handoff = typer.Typer(
        help="Start serving engines from the agent's warm copy (docs/engines.md).",
        no_args_is_help=True,
    )
    app.add_typer(handoff, name="handoff")

    @handoff.command("wait", cls=JsonCommand)
    def wait(
        model: ModelOption,
        agent: AgentOption = None,
        timeout: Annotated[
            str, typer.Option("--timeout", help="How long to wait, e.g. 300s or 5m.")
        ] = "300s",
        poll: Annotated[str, typer.Option("--poll", help="Status poll interval.")] = "1s",
        token_file: TokenOption = None,
        write_to: Annotated[
            Path | None,
            typer.Option(
                "--write-to",
                help="Also write what the engine should load (the directory, or --fallback) here.",
            ),
        ] = None,
        fallback: Annotated[
            str,
            typer.Option(
                "--fallback",
                help="What the engine loads when the model is not held (e.g. the Hub id).",
            ),
        ] = "",
        yield_gpu: Annotated[
            bool,
            typer.Option(
                "--yield-gpu/--no-yield-gpu",
                help=(
                    "Before returning, have the agent free the GPU memory it holds (YieldGpu), "
                    "so the engine finds it free at start-up."
                ),
            ),
        ] = True,
        gpus: Annotated[
            list[str] | None,
            typer.Option(
                "--gpu",
                help="GPU uuid to yield (repeatable; default: every GPU of the node).",
            ),
        ] = None,
        yield_hold: Annotated[
            str,
            typer.Option(
                "--yield-hold",
                help="How long the agent keeps off the GPUs, e.g. 10m (default: the agent's).",
            ),
        ] = "",
        json_out: JsonOption = None,
    ) -> None:
        """Wait until the node's agent holds MODEL's directory; print its path (exit 0).

        After --timeout: one line on stderr that the engine falls back to its normal download,
        --fallback on stdout when given, exit 0. Either way, unless --no-yield-gpu, the agent
        first moves the models it holds in GPU memory down to host memory and keeps GPU-tier
        preloads off the GPUs for --yield-hold (one line on stderr says what it freed).
        --json: {model, held, load (what the engine should load, or null), model_dir,
        current_dir, revision, reason}.
        """
        from gpu_agent.handoff import AgentChannel, wait_for_directory

        result = JsonOutput.parse(json_out)
        timeout_s = _seconds(timeout, "--timeout")
        poll_s = _seconds(poll, "--poll")
        hold_s = _seconds(yield_hold, "--yield-hold") if yield_hold else 0.0
        with AgentChannel(_agent_address(agent), token=_token(token_file)) as channel:
            found = wait_for_directory(channel, model, timeout_s=timeout_s, poll_s=poll_s)
            if yield_gpu:
                _yield(channel, model, gpus=tuple(gpus or ()), hold_s=hold_s)
        load = found.model_dir if found.model_dir is not None else (fallback or None)
        result.write(
            {
                "model": model,
                "held": found.model_dir is not None,
                "load": load,
                "model_dir": found.model_dir,
                "current_dir": found.current_dir or None,
                "revision": found.revision or None,
                "reason": found.reason or None,
            }
        )
        if found.model_dir is not None:
            if write_to is not None:
                _write(write_to, found.model_dir)
            if result.human:
                typer.echo(found.model_dir)
            sys.stderr.write(
                f"prewarm handoff: {model} is held at revision {found.revision} "
                f"({found.current_dir} -> {found.model_dir})\n"
            )
            return
        sys.stderr.write(
            f"prewarm handoff: {model}: {found.reason}; the engine falls back to its normal "
            "download\n"
        )
        if fallback:
            if write_to is not None:
                _write(write_to, fallback)
            if result.human:
                typer.echo(fallback)

    @handoff.command("hold")
    def hold(
        model: ModelOption,
        agent: AgentOption = None,
        ttl: Annotated[
            str,
            typer.Option("--ttl", help="Lease TTL: the agent ends it after this long unrenewed."),
        ] = "30s",
        renew_every: Annotated[
            str, typer.Option("--renew-every", help="Renewal interval (well under --ttl).")
        ] = "10s",
        token_file: TokenOption = None,
    ) -> None:
        """Hold a lease on MODEL until SIGTERM, so the agent never evicts it under the engine."""
        from gpu_agent.handoff import AgentChannel, Holder

        ttl_s = _seconds(ttl, "--ttl")
        renew_s = _seconds(renew_every, "--renew-every")

        def log(line: str) -> None:
            sys.stderr.write(f"prewarm handoff: {line}\n")
            sys.stderr.flush()

        with AgentChannel(_agent_address(agent), token=_token(token_file)) as channel:
            holder = Holder(channel, model, ttl_s=ttl_s, renew_s=renew_s, log=log)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: holder.stop())
            holder.run()

    @handoff.command("path", cls=JsonCommand)
    def path(
        model: ModelOption,
        shm_dir: Annotated[
            str, typer.Option("--shm-dir", help="The agent's shm_dir on the node.")
        ] = "/dev/shm/prewarm",
        json_out: JsonOption = None,
    ) -> None:
        """Print the stable path a pod passes to its engine: <shm_dir>/models/<slug>/current."""
        from gpu_agent.model_dir import CURRENT_LINK, MODELS_SUBDIR, model_slug

        if not model:
            raise InvalidInput("--model is empty")
        result = JsonOutput.parse(json_out)
        stable = str(Path(shm_dir) / MODELS_SUBDIR / model_slug(model) / CURRENT_LINK)
        result.write({"model": model, "path": stable})
        if result.human:
            typer.echo(stable)
