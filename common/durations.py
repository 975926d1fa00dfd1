"""Parsing of human durations (``30m``, ``1h30m``, ``15s``, ``2d``, plain seconds)."""

from __future__ import annotations

import re

from common.errors import InvalidInput

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration_s(text: str) -> float:
    """Return the number of seconds in ``text``.

    Accepts a plain non-negative number of seconds (``"90"``) or a sequence of ``<number><unit>``
    parts with units ``ms, s, m, h, d, w`` (``"1h30m"``). Raises :class:`InvalidInput` naming the
    accepted forms for anything else, including negative values and an empty string.
    """
    cleaned = text.strip().lower()
    if not cleaned:
        raise InvalidInput("empty duration: use a number of seconds or e.g. '30m', '1h30m', '2d'")
    try:
        value = float(cleaned)
    except ValueError:
        pass
    else:
        if value < 0 or value != value or value in (float("inf"),):
            raise InvalidInput(f"duration must be a finite number >= 0, got {text!r}")
        return value
    position = 0
    total = 0.0
    for match in _PART.finditer(cleaned):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(cleaned) or position == 0:
        raise InvalidInput(
            f"cannot parse duration {text!r}: use a number of seconds or parts like "
            "'30m', '1h30m', '2d' (units ms, s, m, h, d, w)"
        )
    return total


def format_duration(seconds: float) -> str:
    """Format seconds compactly for people: ``90`` -> ``'1m30s'``, ``3600`` -> ``'1h'``."""
    remaining = round(seconds)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
