"""Manual requests, pins and pauses: the stored values and what they demand at a moment.

Owns: the typed values a person or script stores through the control API (:class:`ManualRequest`,
:class:`Pin`, :class:`Pause`, gathered in a :class:`ControlState`), dropping what has expired
(:func:`prune`), and :func:`active_overrides`, which turns a state into the cycle's manual inputs at
a moment (:class:`ActiveOverrides`). Must not do I/O or read a clock: every "now" is a parameter.
Validation, the state transitions and the stored document are the control API's
(:mod:`prewarm.control.overrides`); turning overrides into plan actions is
:mod:`prewarm.cycle.manual_actions`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from common.errors import NotFound
from common.ids import ModelId, RequestId
from planner.actions import Tier


@dataclass(frozen=True, slots=True)
class ManualRequest:
    """Keep ``model`` warm from ``start_s`` to ``end_s``: at least ``replicas`` replicas and/or
    weights held in ``tier``. At least one of ``replicas`` and ``tier`` is set.
    """

    id: RequestId
    model: ModelId
    replicas: int | None
    tier: Tier | None
    start_s: float
    end_s: float
    created_s: float
    created_by: str
    reason: str = ""

    def is_active(self, now_s: float) -> bool:
        """In force at ``now_s``: ``start_s <= now_s < end_s``."""
        return self.start_s <= now_s < self.end_s

    def is_expired(self, now_s: float) -> bool:
        """Over at ``now_s``: ``now_s >= end_s``."""
        return now_s >= self.end_s

    def describe(self) -> str:
        """One line for plan reasons and ``prewarm explain``."""
        wants = []
        if self.replicas is not None:
            wants.append(f">= {self.replicas} replicas")
        if self.tier is not None:
            wants.append(f"weights in {self.tier.name.lower()}")
        by = f" by {self.created_by}" if self.created_by else ""
        why = f": {self.reason}" if self.reason else ""
        return f"manual request {self.id}{by} ({' and '.join(wants)}){why}"


@dataclass(frozen=True, slots=True)
class Pin:
    """Keep ``model`` resident in ``tier`` until unpinned (``until_s`` None) or ``until_s``."""

    model: ModelId
    tier: Tier
    created_s: float
    created_by: str
    until_s: float | None = None

    def is_expired(self, now_s: float) -> bool:
        """Over at ``now_s``."""
        return self.until_s is not None and now_s >= self.until_s


@dataclass(frozen=True, slots=True)
class Pause:
    """prewarm takes no action for ``model`` (or for every model when ``model`` is None)."""

    model: ModelId | None
    created_s: float
    created_by: str
    until_s: float | None = None

    def is_expired(self, now_s: float) -> bool:
        """Over at ``now_s``."""
        return self.until_s is not None and now_s >= self.until_s


@dataclass(frozen=True, slots=True)
class ControlState:
    """Everything the control API stores: requests (ordered by creation), pins, pauses."""

    requests: tuple[ManualRequest, ...] = ()
    pins: tuple[Pin, ...] = ()
    pauses: tuple[Pause, ...] = ()

    def request(self, request_id: RequestId) -> ManualRequest:
        """The request with ``request_id``, or :class:`NotFound`."""
        for request in self.requests:
            if request.id == request_id:
                return request
        raise NotFound(
            f"no manual request {request_id} (it may have expired or been cancelled); "
            "list current ones with `prewarm requests`"
        )


def prune(state: ControlState, now_s: float) -> ControlState:
    """``state`` without what has expired at ``now_s`` (requests, pins and pauses)."""
    return ControlState(
        requests=tuple(r for r in state.requests if not r.is_expired(now_s)),
        pins=tuple(p for p in state.pins if not p.is_expired(now_s)),
        pauses=tuple(p for p in state.pauses if not p.is_expired(now_s)),
    )


@dataclass(frozen=True, slots=True)
class FloorOverride:
    """At least ``min_replicas`` replicas of ``model`` until ``until_s`` (its requests' end)."""

    model: ModelId
    min_replicas: int
    until_s: float
    request_ids: tuple[RequestId, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class TierOverride:
    """Hold ``model``'s weights in ``tier`` (or faster) until ``until_s`` (None: pinned)."""

    model: ModelId
    tier: Tier
    until_s: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class ActiveOverrides:
    """What the manual state demands at ``now_s``, per model; the planner's manual inputs.

    - ``floors``: replica floors of requests in force (or starting within their model's lead time,
      so the floor is met at the request's start), with the time they expire.
    - ``tiers``: tier targets of requests in force and of pins (the fastest tier wins).
    - ``pinned``: pinned models and their tier.
    - ``paused`` / ``global_pause``: prewarm must take no new action for these models (for any
      model when ``global_pause``); floors and tiers of paused models are still reported, and pause
      wins over them (:meth:`is_paused`).
    - ``pending``: stored requests that start later than their lead window, soonest first.
    """

    now_s: float
    floors: Mapping[ModelId, FloorOverride] = field(default_factory=dict)
    tiers: Mapping[ModelId, TierOverride] = field(default_factory=dict)
    pinned: Mapping[ModelId, Tier] = field(default_factory=dict)
    paused: frozenset[ModelId] = frozenset()
    global_pause: bool = False
    pending: tuple[ManualRequest, ...] = ()

    def is_paused(self, model: ModelId) -> bool:
        """Whether prewarm must not act on ``model`` now."""
        return self.global_pause or model in self.paused

    def describe(self, model: ModelId) -> tuple[str, ...]:
        """Lines for ``prewarm explain``: what applies to ``model`` now."""
        lines: list[str] = []
        if self.global_pause:
            lines.append("prewarm is paused for every model")
        elif model in self.paused:
            lines.append(f"{model} is paused")
        if model in self.pinned:
            lines.append(f"pinned in {self.pinned[model].name.lower()}")
        if model in self.floors:
            lines.append(self.floors[model].reason)
        if model in self.tiers and model not in self.pinned:
            lines.append(self.tiers[model].reason)
        for request in self.pending:
            if request.model == model:
                lines.append(f"pending: {request.describe()}, starts {_utc(request.start_s)}")
        return tuple(lines)


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lead(lead_time_s: float | Callable[[ModelId], float], model: ModelId) -> float:
    value = lead_time_s(model) if callable(lead_time_s) else lead_time_s
    return max(0.0, float(value))


def active_overrides(
    state: ControlState,
    now_s: float,
    *,
    lead_time_s: float | Callable[[ModelId], float] = 0.0,
) -> ActiveOverrides:
    """What ``state`` demands at ``now_s`` (pure).

    A request counts from ``start_s - lead_time_s(model)`` (pass the model's measured cold-start
    lead time, so the replicas are ready *at* the start) until ``end_s``. Overlapping requests for
    one model combine: the floor is the largest ``replicas`` and expires when the last request
    asking for that many ends; the tier target is the fastest tier asked for.
    """
    current = prune(state, now_s)
    by_model: dict[ModelId, list[ManualRequest]] = {}
    pending: list[ManualRequest] = []
    for request in current.requests:
        if request.start_s - _lead(lead_time_s, request.model) <= now_s:
            by_model.setdefault(request.model, []).append(request)
        else:
            pending.append(request)

    floors: dict[ModelId, FloorOverride] = {}
    tiers: dict[ModelId, TierOverride] = {}
    for model, requests in by_model.items():
        with_replicas = [r for r in requests if r.replicas is not None]
        if with_replicas:
            top = max(r.replicas or 0 for r in with_replicas)
            holders = [r for r in with_replicas if r.replicas == top]
            floors[model] = FloorOverride(
                model=model,
                min_replicas=top,
                until_s=max(r.end_s for r in holders),
                request_ids=tuple(r.id for r in holders),
                reason="; ".join(r.describe() for r in holders),
            )
        with_tier = [r for r in requests if r.tier is not None]
        if with_tier:
            best = max(r.tier or Tier.REMOTE for r in with_tier)
            holders = [r for r in with_tier if r.tier == best]
            tiers[model] = TierOverride(
                model=model,
                tier=best,
                until_s=max(r.end_s for r in holders),
                reason="; ".join(r.describe() for r in holders),
            )

    pinned: dict[ModelId, Tier] = {}
    for pin in current.pins:
        pinned[pin.model] = pin.tier
        existing = tiers.get(pin.model)
        if existing is None or pin.tier >= existing.tier:
            by = f" by {pin.created_by}" if pin.created_by else ""
            tiers[pin.model] = TierOverride(
                model=pin.model,
                tier=pin.tier,
                until_s=pin.until_s,
                reason=f"pinned in {pin.tier.name.lower()}{by}",
            )

    paused = frozenset(p.model for p in current.pauses if p.model is not None)
    return ActiveOverrides(
        now_s=now_s,
        floors=floors,
        tiers=tiers,
        pinned=pinned,
        paused=paused,
        global_pause=any(p.model is None for p in current.pauses),
        pending=tuple(sorted(pending, key=lambda r: (r.start_s, r.id))),
    )
