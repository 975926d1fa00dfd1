"""``prewarm warm | cancel | pin | unpin | pause | resume | requests | plan | explain``.

Owns: the control-API client commands: their options, parsing of ``--at`` and ``--for``, and
printing results (tables for people, ``--json PATH|-`` for scripts: :mod:`prewarm.cli.output`). Must
not: hold control logic (the server validates; :mod:`prewarm.control.client` talks gRPC). Errors
propagate as :class:`common.errors.PrewarmError` kinds, which ``prewarm.cli.main`` turns into exit
codes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from common.durations import format_duration, parse_duration_s
from common.errors import InvalidInput
from common.tiers import HELD_TIERS, Tier
from prewarm.cli.output import JsonCommand, JsonOption, JsonOutput, print_table
from prewarm.control.client import DEFAULT_SERVER, TOKEN_ENV, ControlClient, read_token
from protos import control_pb2
from protos.tiers import tier_label

_HHMM = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_TIERS = {tier.label: tier for tier in HELD_TIERS}


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown time zone {tz!r}; use an IANA name like UTC or Europe/Paris"
        ) from None


def parse_at(text: str, *, now_s: float, tz: str = "UTC") -> float:
    """Epoch seconds of ``--at``: ``HH:MM[:SS]`` (the next occurrence after ``now_s`` in ``tz``)
    or an ISO-8601 date-time (``tz`` applies when it has no offset). :class:`InvalidInput` else.
    """
    zone = _zone(tz)
    cleaned = text.strip()
    match = _HHMM.match(cleaned)
    if match:
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise InvalidInput(f"--at {text!r} is not a time of day (HH:MM, 00:00 to 23:59)")
        now = datetime.fromtimestamp(now_s, tz=zone)
        candidate = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
        if candidate.timestamp() <= now_s:
            candidate = (now + timedelta(days=1)).replace(
                hour=hour, minute=minute, second=second, microsecond=0
            )
        return candidate.timestamp()
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise InvalidInput(
            f"--at {text!r} is neither HH:MM nor an ISO-8601 date-time "
            "(e.g. 08:45 or 2026-11-23T08:45:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def _duration(text: str, option: str) -> float:
    seconds = parse_duration_s(text)
    if seconds <= 0:
        raise InvalidInput(f"{option} must be a positive duration, e.g. 2h or 30m; got {text!r}")
    return seconds


def _tier(text: str | None) -> Tier | None:
    if text is None:
        return None
    try:
        return _TIERS[text.strip().lower()]
    except KeyError:
        raise InvalidInput(f"--tier must be one of disk, host, gpu; got {text!r}") from None


def _when(epoch_s: float) -> str:
    if not epoch_s:
        return "-"
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M")


_INT64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_UINT64)


def _as_dict(message: Message) -> dict[str, Any]:
    """``message`` as JSON-able data; 64-bit integers as numbers (protobuf's JSON makes them
    strings, which scripts then have to convert).
    """
    document = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(message.DESCRIPTOR, document)
    return document


def _int64_as_numbers(descriptor: Any, document: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name not in document:
            continue
        value = document[field.name]
        if field.message_type is not None:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    _int64_as_numbers(field.message_type, item)
        elif field.type in _INT64:
            document[field.name] = (
                [int(v) for v in value] if isinstance(value, list) else int(value)
            )


Server = Annotated[
    str,
    typer.Option(
        "--server", "-s", envvar="PREWARM_SERVER", help="Control API host:port.", show_default=True
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option("--token-file", help=f"File holding the bearer token (default: ${TOKEN_ENV})."),
]
TlsCa = Annotated[Path | None, typer.Option("--tls-ca", help="CA certificate: connect with TLS.")]
TlsCert = Annotated[
    Path | None,
    typer.Option("--tls-cert", envvar="PREWARM_TLS_CERT", help="Client certificate (mTLS)."),
]
TlsKey = Annotated[
    Path | None,
    typer.Option("--tls-key", envvar="PREWARM_TLS_KEY", help="Client certificate's key (mTLS)."),
]
Timeout = Annotated[float, typer.Option("--timeout", help="Deadline of the call, seconds.")]


def _client(
    server: str,
    token_file: Path | None,
    timeout: float,
    *,
    tls: tuple[Path | None, Path | None, Path | None],
) -> ControlClient:
    ca, cert, key = tls
    if (cert is None) != (key is None):
        raise InvalidInput("give both --tls-cert and --tls-key for a client certificate")
    if cert is not None and ca is None:
        raise InvalidInput("a client certificate needs --tls-ca (the server's CA)")
    return ControlClient(
        server,
        token=read_token(token_file),
        timeout_s=timeout,
        tls_ca_file=ca,
        tls_cert_file=cert,
        tls_key_file=key,
    )


def _print_requests(requests: list[control_pb2.ManualRequest], *, title: str) -> None:
    print_table(
        title,
        ("id", "model", "replicas", "tier", "start (UTC)", "for", "state", "by", "reason"),
        [
            (
                r.id,
                r.model,
                r.replicas if r.HasField("replicas") else "-",
                tier_label(r.tier, default="-"),
                _when(r.start_s),
                format_duration(r.end_s - r.start_s),
                r.state,
                r.created_by or "-",
                r.reason or "",
            )
            for r in requests
        ],
    )


def register(app: typer.Typer) -> None:
    """Add the control-API client commands to ``app``."""

    @app.command("warm", cls=JsonCommand)
    def warm(
        model: Annotated[str, typer.Argument(help="Model id, e.g. llama-70b.")],
        duration: Annotated[
            str, typer.Option("--for", help="How long to hold it warm, e.g. 2h, 90m.")
        ],
        replicas: Annotated[
            int | None, typer.Option("--replicas", "-r", help="Keep at least N replicas.")
        ] = None,
        tier: Annotated[
            str | None, typer.Option("--tier", help="Hold weights in disk, host or gpu.")
        ] = None,
        at: Annotated[
            str | None,
            typer.Option("--at", help="Start: HH:MM (next occurrence) or ISO-8601; default now."),
        ] = None,
        tz: Annotated[str, typer.Option("--tz", help="Time zone of --at.")] = "UTC",
        reason: Annotated[str, typer.Option("--reason", help="Why (shown in the plan).")] = "",
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Ask prewarm to keep a model warm from --at for --for (a planner input with an expiry)."""
        result = JsonOutput.parse(json_out)
        duration_s = _duration(duration, "--for")
        start_s = parse_at(at, now_s=time.time(), tz=tz) if at is not None else 0.0
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            stored = client.warm(
                model,
                replicas=replicas,
                tier=_tier(tier),
                start_s=start_s,
                duration_s=duration_s,
                reason=reason,
            )
        result.write(_as_dict(stored))
        if not result.human:
            return
        _print_requests([stored], title="warm request stored")

    @app.command("cancel", cls=JsonCommand)
    def cancel(
        request_id: Annotated[str, typer.Argument(help="Request id (req-...).")],
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Withdraw a manual warm request."""
        result = JsonOutput.parse(json_out)
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            cancelled = client.cancel(request_id)
        result.write(_as_dict(cancelled))
        if not result.human:
            return
        _print_requests([cancelled], title="cancelled")

    @app.command("pin", cls=JsonCommand)
    def pin(
        model: Annotated[str, typer.Argument(help="Model id.")],
        tier: Annotated[str, typer.Option("--tier", help="disk, host or gpu.")] = "gpu",
        duration: Annotated[
            str | None, typer.Option("--for", help="How long; default until unpinned.")
        ] = None,
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Keep a model resident in a tier."""
        result = JsonOutput.parse(json_out)
        duration_s = _duration(duration, "--for") if duration is not None else 0.0
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            stored = client.pin(model, tier=_tier(tier) or Tier.GPU, duration_s=duration_s)
        _print_pin(stored, result=result, title="pinned")

    @app.command("unpin", cls=JsonCommand)
    def unpin(
        model: Annotated[str, typer.Argument(help="Model id.")],
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Remove a model's pin."""
        result = JsonOutput.parse(json_out)
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            removed = client.unpin(model)
        _print_pin(removed, result=result, title="unpinned")

    @app.command("pause", cls=JsonCommand)
    def pause(
        model: Annotated[str | None, typer.Argument(help="Model id (or --all).")] = None,
        all_models: Annotated[bool, typer.Option("--all", help="Pause every model.")] = False,
        duration: Annotated[
            str | None, typer.Option("--for", help="How long; default until resumed.")
        ] = None,
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Stop prewarm acting on a model (or on every model with --all)."""
        result = JsonOutput.parse(json_out)
        scope = _scope(model, all_models)
        duration_s = _duration(duration, "--for") if duration is not None else 0.0
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            stored = client.pause(scope, duration_s=duration_s)
        _print_pause(stored, result=result, title="paused")

    @app.command("resume", cls=JsonCommand)
    def resume(
        model: Annotated[str | None, typer.Argument(help="Model id (or --all).")] = None,
        all_models: Annotated[bool, typer.Option("--all", help="Lift the global pause.")] = False,
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Let prewarm act on a paused model again (or lift the global pause with --all)."""
        result = JsonOutput.parse(json_out)
        scope = _scope(model, all_models)
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            removed = client.resume(scope)
        _print_pause(removed, result=result, title="resumed")

    @app.command("requests", cls=JsonCommand)
    def requests(
        model: Annotated[str, typer.Option("--model", help="Only this model.")] = "",
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """List manual warm requests, pins and pauses."""
        result = JsonOutput.parse(json_out)
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            listing = client.list_requests(model)
        result.write(_as_dict(listing))
        if not result.human:
            return
        _print_requests(list(listing.requests), title="manual warm requests")
        if listing.pins:
            print_table(
                "pins",
                ("model", "tier", "until (UTC)", "by"),
                [
                    (
                        p.model,
                        tier_label(p.tier, default="-"),
                        _when(p.until_s),
                        p.created_by or "-",
                    )
                    for p in listing.pins
                ],
            )
        if listing.pauses:
            print_table(
                "pauses",
                ("scope", "until (UTC)", "by"),
                [
                    ("all models" if p.all_models else p.model, _when(p.until_s), p.created_by)
                    for p in listing.pauses
                ],
            )

    @app.command("plan", cls=JsonCommand)
    def plan(
        model: Annotated[str, typer.Option("--model", help="Only this model's actions.")] = "",
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Show the daemon's latest plan."""
        result = JsonOutput.parse(json_out)
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            current = client.get_plan(model)
        result.write(_as_dict(current))
        if not result.human:
            return
        if not current.available:
            typer.echo("no plan yet: the daemon has not finished its first tick")
            return
        print_table(
            f"plan at {_when(current.now_s)} UTC",
            ("kind", "model", "target", "value", "reason"),
            [(a.kind, a.model or a.pool, _target(a), a.value, a.reason) for a in current.actions],
        )

    @app.command("explain", cls=JsonCommand)
    def explain(
        model: Annotated[str, typer.Argument(help="Model id.")],
        server: Server = DEFAULT_SERVER,
        token_file: TokenFile = None,
        tls_ca: TlsCa = None,
        tls_cert: TlsCert = None,
        tls_key: TlsKey = None,
        timeout: Timeout = 10.0,
        json_out: JsonOption = None,
    ) -> None:
        """Why the plan holds what it holds for a model: forecast, value, lead times, limits."""
        result = JsonOutput.parse(json_out)
        with _client(server, token_file, timeout, tls=(tls_ca, tls_cert, tls_key)) as client:
            answer = client.explain(model)
        result.write(_as_dict(answer))
        if not result.human:
            return
        rows: list[tuple[str, Any]] = [
            ("forecast", answer.forecast_summary),
            ("method", answer.forecast_method or "-"),
            ("P(request in horizon)", answer.p_request_within_horizon),
            ("value (s saved)", answer.value),
        ]
        rows += [
            (
                f"lead time: {lt.stage}",
                f"{format_duration(lt.seconds)} ({lt.observations} observed)",
            )
            for lt in answer.lead_times
        ]
        rows += [("constraint", c) for c in answer.constraints]
        rows += [("action", a) for a in answer.actions]
        rows += [("override", o) for o in answer.overrides]
        print_table(f"explain {answer.model}", ("", ""), rows)
        if answer.summary:
            typer.echo(answer.summary)


def _scope(model: str | None, all_models: bool) -> str | None:
    if all_models and model:
        raise InvalidInput("give a model or --all, not both")
    if not all_models and not model:
        raise InvalidInput("give a model, or --all for every model")
    return None if all_models else model


def _target(action: control_pb2.PlanAction) -> str:
    describe: dict[str, Callable[[control_pb2.PlanAction], str]] = {
        "replica_floor": lambda a: f">= {a.min_replicas} replicas of {a.workload}",
        "preload": lambda a: (
            f"{tier_label(a.tier, default='?')} on {a.node} ({a.bytes / 1e9:.1f} GB)"
        ),
        "evict": lambda a: f"drop {tier_label(a.tier, default='?')} on {a.node}",
        "node_capacity": lambda a: f"{a.gpus} GPUs",
        "image_prepull": lambda a: a.image,
    }
    render = describe.get(action.kind)
    return render(action) if render else "-"


def _print_pin(pin: control_pb2.Pin, *, result: JsonOutput, title: str) -> None:
    result.write(_as_dict(pin))
    if not result.human:
        return
    print_table(
        title,
        ("model", "tier", "until (UTC)", "by"),
        [(pin.model, tier_label(pin.tier, default="-"), _when(pin.until_s), pin.created_by or "-")],
    )


def _print_pause(entry: control_pb2.Pause, *, result: JsonOutput, title: str) -> None:
    result.write(_as_dict(entry))
    if not result.human:
        return
    scope = "all models" if entry.all_models else entry.model
    print_table(
        title, ("scope", "until (UTC)", "by"), [(scope, _when(entry.until_s), entry.created_by)]
    )
