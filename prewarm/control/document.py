"""The stored form of the manual state: a versioned JSON document (kept in a ConfigMap).

Owns: :func:`to_document` / :func:`from_document` and their string forms :func:`dumps` /
:func:`loads`. Unknown keys are ignored so that a newer writer's additions do not break an older
reader during a rolling upgrade; a malformed document is :class:`InvalidInput` naming the field.
Must not do I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from common.errors import InvalidInput
from common.ids import ModelId, RequestId
from planner.actions import Tier
from prewarm.cycle.manual import ControlState, ManualRequest, Pause, Pin

DOCUMENT_VERSION = 1
"""Version of the stored JSON document (``version`` key)."""


def _tier_name(tier: Tier | None) -> str | None:
    return None if tier is None else tier.name.lower()


def _tier_of(value: Any) -> Tier | None:
    if value is None:
        return None
    try:
        return Tier[str(value).upper()]
    except KeyError:
        raise InvalidInput(f"stored tier {value!r} is not one of disk, host, gpu") from None


def to_document(state: ControlState) -> dict[str, Any]:
    """``state`` as a JSON-serialisable mapping (the stored format, ``version`` 1)."""
    return {
        "version": DOCUMENT_VERSION,
        "requests": [
            {
                "id": r.id,
                "model": r.model,
                "replicas": r.replicas,
                "tier": _tier_name(r.tier),
                "start_s": r.start_s,
                "end_s": r.end_s,
                "created_s": r.created_s,
                "created_by": r.created_by,
                "reason": r.reason,
            }
            for r in state.requests
        ],
        "pins": [
            {
                "model": p.model,
                "tier": _tier_name(p.tier),
                "created_s": p.created_s,
                "created_by": p.created_by,
                "until_s": p.until_s,
            }
            for p in state.pins
        ],
        "pauses": [
            {
                "model": p.model,
                "created_s": p.created_s,
                "created_by": p.created_by,
                "until_s": p.until_s,
            }
            for p in state.pauses
        ],
    }


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def from_document(document: Mapping[str, Any]) -> ControlState:
    """The :class:`ControlState` stored as ``document``; :class:`InvalidInput` if it is corrupt."""
    version = document.get("version")
    if version != DOCUMENT_VERSION:
        raise InvalidInput(
            f"stored control state has version {version!r}, this prewarm reads version "
            f"{DOCUMENT_VERSION}; upgrade prewarm or restore the ConfigMap"
        )
    try:
        requests = tuple(
            ManualRequest(
                id=RequestId(str(item["id"])),
                model=ModelId(str(item["model"])),
                replicas=None if item.get("replicas") is None else int(item["replicas"]),
                tier=_tier_of(item.get("tier")),
                start_s=float(item["start_s"]),
                end_s=float(item["end_s"]),
                created_s=float(item["created_s"]),
                created_by=str(item.get("created_by", "")),
                reason=str(item.get("reason", "")),
            )
            for item in _items(document, "requests")
        )
        pins = tuple(
            Pin(
                model=ModelId(str(item["model"])),
                tier=_tier_of(item["tier"]) or Tier.GPU,
                created_s=float(item["created_s"]),
                created_by=str(item.get("created_by", "")),
                until_s=_optional_float(item.get("until_s")),
            )
            for item in _items(document, "pins")
        )
        pauses = tuple(
            Pause(
                model=None if item.get("model") is None else ModelId(str(item["model"])),
                created_s=float(item["created_s"]),
                created_by=str(item.get("created_by", "")),
                until_s=_optional_float(item.get("until_s")),
            )
            for item in _items(document, "pauses")
        )
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, InvalidInput):
            raise
        raise InvalidInput(
            f"stored control state is corrupt ({type(error).__name__}: {error}); "
            "fix or delete the ConfigMap"
        ) from error
    return ControlState(requests=requests, pins=pins, pauses=pauses)


def _items(document: Mapping[str, Any], key: str) -> Iterable[Mapping[str, Any]]:
    items = document.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InvalidInput(f"stored control state: {key!r} must be a list of objects")
    return items


def dumps(state: ControlState) -> str:
    """``state`` as compact, deterministic JSON."""
    return json.dumps(to_document(state), sort_keys=True, separators=(",", ":"), allow_nan=False)


def loads(text: str) -> ControlState:
    """Parse what :func:`dumps` wrote; :class:`InvalidInput` if it is not valid."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"stored control state is not JSON ({error}); fix or delete it"
        ) from error
    if not isinstance(document, dict):
        raise InvalidInput("stored control state must be a JSON object")
    return from_document(document)
