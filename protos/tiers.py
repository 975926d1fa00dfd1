"""The one mapping between :class:`common.tiers.Tier` and the proto ``Tier`` enums.

``gpu_agent.proto`` and ``control.proto`` declare the same enum (``TIER_UNSPECIFIED``,
``TIER_DISK``, ``TIER_HOST``, ``TIER_GPU``); a tier maps to the value named ``TIER_<NAME>`` and
``Tier.REMOTE`` (or no tier) to ``TIER_UNSPECIFIED``. Every package that speaks a proto converts
here and nowhere else. It must not decide anything about tiers (which one to use, what a missing
one defaults to): callers do.
"""

from __future__ import annotations

from common.errors import InvalidInput
from common.tiers import HELD_TIERS, Tier
from protos import control_pb2, gpu_agent_pb2

_AGENT = {tier: gpu_agent_pb2.Tier.Value(f"TIER_{tier.name}") for tier in HELD_TIERS}
_CONTROL = {tier: control_pb2.Tier.Value(f"TIER_{tier.name}") for tier in HELD_TIERS}
# The two enums are declared alike (tests/gpu_agent/test_tiers.py checks it), so one reverse
# table serves values of either.
_FROM_PROTO: dict[int, Tier] = {int(value): tier for tier, value in _AGENT.items()}


def agent_tier(tier: Tier | None) -> gpu_agent_pb2.Tier.ValueType:
    """The ``gpu_agent.proto`` value of ``tier`` (``REMOTE`` and ``None``: TIER_UNSPECIFIED)."""
    if tier is None:
        return gpu_agent_pb2.TIER_UNSPECIFIED
    return _AGENT.get(tier, gpu_agent_pb2.TIER_UNSPECIFIED)


def control_tier(tier: Tier | None) -> control_pb2.Tier.ValueType:
    """The ``control.proto`` value of ``tier`` (``REMOTE`` and ``None``: TIER_UNSPECIFIED)."""
    if tier is None:
        return control_pb2.TIER_UNSPECIFIED
    return _CONTROL.get(tier, control_pb2.TIER_UNSPECIFIED)


def tier_from_proto(value: int) -> Tier | None:
    """The tier of a proto ``Tier`` value of either contract; ``None`` for TIER_UNSPECIFIED.

    :class:`InvalidInput` for a value neither enum declares (a newer or broken client).
    """
    if value == gpu_agent_pb2.TIER_UNSPECIFIED:
        return None
    try:
        return _FROM_PROTO[value]
    except KeyError:
        raise InvalidInput(f"unknown tier {value}; use TIER_DISK, TIER_HOST or TIER_GPU") from None


def tier_label(value: int, *, default: str) -> str:
    """The label (``"gpu"``) of a proto ``Tier`` value, for display; ``default`` for any other."""
    tier = _FROM_PROTO.get(value)
    return default if tier is None else tier.label
