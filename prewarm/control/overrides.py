"""Manual overrides as the control API handles them: validation and state transitions.

Owns: checking ids and requests against the configured caps (:func:`validate_request`) and the
pure state transitions (:func:`add_request`, :func:`cancel_request`, :func:`pin_model`, ...). Must
not do I/O or read a clock: every "now" is a parameter. The stored JSON document is
:mod:`prewarm.control.document` (re-exported here).

The values themselves (:class:`ManualRequest`, :class:`Pin`, :class:`Pause`, :class:`ControlState`)
and what they demand at a moment (:func:`active_overrides`) are the decision cycle's inputs and live
in :mod:`prewarm.cycle.manual` (re-exported here); the cycle turns them into plan actions, so a
manual request shows up in the plan, the metrics and the dashboards, and obeys the budget caps.

Errors: :class:`InvalidInput` (malformed: fix the input), :class:`NotFound` (no such model or
request), :class:`ResourceExhausted` (over a budget cap: ask for less or raise the cap).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from common.durations import format_duration
from common.errors import InvalidInput, NotFound, ResourceExhausted
from common.ids import ModelId, RequestId
from planner.actions import Tier
from prewarm.control.document import DOCUMENT_VERSION, dumps, from_document, loads, to_document
from prewarm.cycle.manual import (
    ActiveOverrides,
    ControlState,
    FloorOverride,
    ManualRequest,
    Pause,
    Pin,
    TierOverride,
    active_overrides,
    prune,
)

ABSURD_REPLICAS = 10_000
"""Replica counts above this are refused as malformed, whatever the configured cap."""

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,252}$")
_REQUEST_ID = re.compile(r"^req-[0-9a-f]{16}$")
_WARMABLE_TIERS = (Tier.DISK, Tier.HOST, Tier.GPU)


def check_model_id(text: str) -> ModelId:
    """``text`` as a :class:`ModelId`, or :class:`InvalidInput` saying what model ids look like."""
    if not isinstance(text, str) or not _MODEL_ID.match(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidInput(
            f"malformed model id {shown!r}: use 1-253 characters, letters, digits and ._:/@+- "
            "starting with a letter or digit (the model label in Prometheus)"
        )
    return ModelId(text)


def check_request_id(text: str) -> RequestId:
    """``text`` as a :class:`RequestId` (``req-`` + 16 hex digits) or :class:`InvalidInput`."""
    if not _REQUEST_ID.match(text):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InvalidInput(
            f"malformed request id {shown!r}: ids look like req-0123456789abcdef; "
            "list them with `prewarm requests`"
        )
    return RequestId(text)


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """The caps a write is checked against (built from ``ControlConfig`` by the service)."""

    max_replicas_per_request: int
    max_duration_s: float
    max_start_ahead_s: float
    start_grace_s: float
    max_active_requests: int
    max_gpu_bytes_per_request: int | None = None


def _check_duration(duration_s: float, *, limits: Limits, what: str, allow_zero: bool) -> None:
    _finite(f"{what} duration", duration_s)
    if duration_s < 0 or (duration_s == 0 and not allow_zero):
        raise InvalidInput(
            f"{what} duration must be > 0 seconds, got {duration_s:g}; e.g. --for 2h"
        )
    if duration_s > limits.max_duration_s:
        raise InvalidInput(
            f"{what} duration {format_duration(duration_s)} is beyond the maximum of "
            f"{format_duration(limits.max_duration_s)} (control.max_duration_s); "
            "ask for less and renew it later"
        )


def _check_known(model: ModelId, known_models: frozenset[ModelId] | None) -> None:
    if known_models is not None and model not in known_models:
        sample = ", ".join(sorted(known_models)[:5]) or "none yet"
        raise NotFound(
            f"unknown model {model!r}: the daemon knows {len(known_models)} models "
            f"(e.g. {sample}); check the name against `prewarm plan` or Prometheus"
        )


def validate_request(
    request: ManualRequest,
    *,
    limits: Limits,
    now_s: float,
    known_models: frozenset[ModelId] | None = None,
    model_bytes: Callable[[ModelId], int | None] | None = None,
) -> None:
    """Refuse ``request`` if it is malformed, unknown or over a cap; return if it may be stored.

    Checks, in order: model id and request id syntax; at least one of replicas/tier; replicas in
    ``1..ABSURD_REPLICAS`` (:class:`InvalidInput`); the model is in ``known_models`` when given
    (:class:`NotFound`); start not before ``now_s - start_grace_s`` and not after
    ``now_s + max_start_ahead_s``; duration ``0 < end - start <= max_duration_s``
    (:class:`InvalidInput`); replicas within ``max_replicas_per_request`` and, for a GPU tier with a
    known model size, ``bytes x max(replicas, 1)`` within ``max_gpu_bytes_per_request``
    (:class:`ResourceExhausted`, with the cap named).
    """
    check_model_id(request.model)
    check_request_id(request.id)
    if request.replicas is None and request.tier is None:
        raise InvalidInput(
            f"a warm request for {request.model} needs replicas (--replicas N) and/or a tier "
            "(--tier gpu|host|disk)"
        )
    if request.replicas is not None:
        if request.replicas < 1:
            raise InvalidInput(
                f"replicas must be >= 1, got {request.replicas}; "
                "to stop warming a model, cancel its request instead"
            )
        if request.replicas > ABSURD_REPLICAS:
            raise InvalidInput(
                f"replicas {request.replicas} is not a plausible replica count "
                f"(more than {ABSURD_REPLICAS}); check the number"
            )
    if request.tier is not None and request.tier not in _WARMABLE_TIERS:
        raise InvalidInput(f"tier must be one of disk, host, gpu; got {request.tier.name.lower()}")
    _check_known(request.model, known_models)
    _finite("start", request.start_s)
    _finite("end", request.end_s)
    if request.start_s < now_s - limits.start_grace_s:
        raise InvalidInput(
            f"start time is {format_duration(now_s - request.start_s)} in the past; "
            "give a future time (--at HH:MM is the next occurrence) or omit it to start now"
        )
    if request.start_s > now_s + limits.max_start_ahead_s:
        raise InvalidInput(
            f"start time is {format_duration(request.start_s - now_s)} ahead, beyond the maximum "
            f"of {format_duration(limits.max_start_ahead_s)} (control.max_start_ahead_s)"
        )
    _check_duration(
        request.end_s - request.start_s, limits=limits, what="request", allow_zero=False
    )
    if request.replicas is not None and request.replicas > limits.max_replicas_per_request:
        raise ResourceExhausted(
            f"{request.replicas} replicas is over the cap of {limits.max_replicas_per_request} "
            "per request (control.max_replicas_per_request); ask for fewer or have an operator "
            "raise the cap"
        )
    if (
        request.tier == Tier.GPU
        and limits.max_gpu_bytes_per_request is not None
        and model_bytes is not None
    ):
        size = model_bytes(request.model)
        if size is not None:
            total = size * max(request.replicas or 1, 1)
            if total > limits.max_gpu_bytes_per_request:
                raise ResourceExhausted(
                    f"holding {request.model} in GPU memory for {max(request.replicas or 1, 1)} "
                    f"replicas needs {total / 1e9:.1f} GB, over the cap of "
                    f"{limits.max_gpu_bytes_per_request / 1e9:.1f} GB per request "
                    "(control.max_gpu_bytes_per_request); ask for fewer replicas or a slower tier"
                )


def add_request(
    state: ControlState, request: ManualRequest, *, limits: Limits, now_s: float
) -> ControlState:
    """``state`` (pruned at ``now_s``) with ``request`` appended.

    Raises :class:`InvalidInput` if the id is taken and :class:`ResourceExhausted` when
    ``max_active_requests`` are already stored. Call :func:`validate_request` first.
    """
    current = prune(state, now_s)
    if any(existing.id == request.id for existing in current.requests):
        raise InvalidInput(f"request id {request.id} is already taken; retry to get a new one")
    if len(current.requests) >= limits.max_active_requests:
        raise ResourceExhausted(
            f"{len(current.requests)} manual requests are already stored, the cap "
            f"(control.max_active_requests); cancel some with `prewarm cancel ID` first"
        )
    return replace(current, requests=(*current.requests, request))


def cancel_request(
    state: ControlState, request_id: RequestId, *, now_s: float
) -> tuple[ControlState, ManualRequest]:
    """``state`` (pruned) without ``request_id``, and the cancelled request; :class:`NotFound`."""
    current = prune(state, now_s)
    found = current.request(request_id)
    remaining = tuple(r for r in current.requests if r.id != request_id)
    return replace(current, requests=remaining), found


def pin_model(
    state: ControlState,
    pin: Pin,
    *,
    limits: Limits,
    now_s: float,
    known_models: frozenset[ModelId] | None = None,
) -> ControlState:
    """``state`` (pruned) with ``pin`` replacing any pin of the same model (idempotent)."""
    check_model_id(pin.model)
    if pin.tier not in _WARMABLE_TIERS:
        raise InvalidInput(f"pin tier must be one of disk, host, gpu; got {pin.tier.name.lower()}")
    _check_known(pin.model, known_models)
    if pin.until_s is not None:
        _check_duration(pin.until_s - now_s, limits=limits, what="pin", allow_zero=False)
    current = prune(state, now_s)
    pins = tuple(p for p in current.pins if p.model != pin.model)
    return replace(current, pins=(*pins, pin))


def unpin_model(state: ControlState, model: ModelId, *, now_s: float) -> tuple[ControlState, Pin]:
    """``state`` (pruned) without the pin of ``model``, and that pin; :class:`NotFound`."""
    check_model_id(model)
    current = prune(state, now_s)
    for pin in current.pins:
        if pin.model == model:
            return replace(current, pins=tuple(p for p in current.pins if p.model != model)), pin
    raise NotFound(f"{model} is not pinned; list pins with `prewarm requests`")


def pause(
    state: ControlState,
    entry: Pause,
    *,
    limits: Limits,
    now_s: float,
    known_models: frozenset[ModelId] | None = None,
) -> ControlState:
    """``state`` (pruned) with ``entry`` replacing any pause of the same scope (idempotent)."""
    if entry.model is not None:
        check_model_id(entry.model)
        _check_known(entry.model, known_models)
    if entry.until_s is not None:
        _check_duration(entry.until_s - now_s, limits=limits, what="pause", allow_zero=False)
    current = prune(state, now_s)
    pauses = tuple(p for p in current.pauses if p.model != entry.model)
    return replace(current, pauses=(*pauses, entry))


def resume(
    state: ControlState, model: ModelId | None, *, now_s: float
) -> tuple[ControlState, Pause]:
    """``state`` (pruned) without the pause of ``model`` (None: global pause); :class:`NotFound`."""
    if model is not None:
        check_model_id(model)
    current = prune(state, now_s)
    for entry in current.pauses:
        if entry.model == model:
            remaining = tuple(p for p in current.pauses if p.model != model)
            return replace(current, pauses=remaining), entry
    what = "prewarm is not paused globally" if model is None else f"{model} is not paused"
    raise NotFound(f"{what}; list pauses with `prewarm requests`")


__all__ = [
    "ABSURD_REPLICAS",
    "DOCUMENT_VERSION",
    "ActiveOverrides",
    "ControlState",
    "FloorOverride",
    "Limits",
    "ManualRequest",
    "Pause",
    "Pin",
    "TierOverride",
    "active_overrides",
    "add_request",
    "cancel_request",
    "check_model_id",
    "check_request_id",
    "dumps",
    "from_document",
    "loads",
    "pause",
    "pin_model",
    "prune",
    "resume",
    "to_document",
    "unpin_model",
    "validate_request",
]
