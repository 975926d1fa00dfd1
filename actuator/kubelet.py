"""What the kubelet reports that lead times are measured from: image pulls and replica starts.

Owns: reading a kubelet ``Pulled`` event (``Successfully pulled image "vllm/vllm-openai:v0.9" in
1m2.5s (1m2.5s including waiting). Image size: 9876543210 bytes.``; older kubelets leave out the
parenthesis and the size) and a pod's start (its containers started -> Ready). Image references are
compared the way a container runtime resolves them (:func:`canonical_image`, from
:mod:`actuator.images`). Pure functions; must not read the API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actuator.images import canonical_image

__all__ = [
    "ImagePull",
    "canonical_image",
    "go_duration_s",
    "image_pull",
    "replica_start_s",
    "rfc3339_s",
]

_PULLED = re.compile(
    r'Successfully pulled image "(?P<image>[^"]+)" in (?P<took>[0-9.a-zµ]+)'
    r"(?: \((?P<waiting>[0-9.a-zµ]+) including waiting\))?"
    r"(?:\. Image size: (?P<size>\d+) bytes)?"
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class ImagePull:
    """One image pull as the kubelet reported it (``size_bytes`` 0 when it did not say)."""

    image: str
    seconds: float
    size_bytes: int = 0


def go_duration_s(text: str) -> float | None:
    """Seconds of a Go duration string (``1m2.5s``, ``850ms``, ``2h0m0s``); None if it is not
    one."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def image_pull(message: str) -> ImagePull | None:
    """The pull a ``Pulled`` event's message reports; None for "already present" and anything
    else that is not a finished pull."""
    found = _PULLED.search(message)
    if found is None:
        return None
    seconds = go_duration_s(found["took"])
    if seconds is None:
        return None
    return ImagePull(found["image"], seconds, int(found["size"] or 0))


def replica_start_s(pod: Mapping[str, Any]) -> float | None:
    """Seconds from a pod's last container start to its Ready condition (None: not Ready, or a
    timestamp is missing). The image pull and scheduling come before the containers start and are
    not included: this is the engine's start, weights and compile included."""
    status = pod.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return None
    ready_s = rfc3339_s(ready.get("lastTransitionTime"))
    started = [
        rfc3339_s(((c.get("state") or {}).get("running") or {}).get("startedAt"))
        for c in status.get("containerStatuses") or []
    ]
    if ready_s is None or not started or any(s is None for s in started):
        return None
    latest = max(s for s in started if s is not None)
    return ready_s - latest if ready_s >= latest else None


def rfc3339_s(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp as the API writes it (``2026-01-02T03:04:05Z``)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
