"""Where a model's weights can be held on a node: the one :class:`Tier` vocabulary of prewarm.

Owns the tiers, their order (slowest first, so ``tier >= Tier.HOST`` reads "in memory") and the
lower-case labels used in metrics, logs and the CLI. The planner decides in these tiers, the
actuator asks agents for them and the agent holds models in them. It must not import anything of
prewarm's or any client library: the mapping to the proto enums is :mod:`protos.tiers`'s.
"""

from __future__ import annotations

import enum


class Tier(enum.IntEnum):
    """Where a model's weights can be held on a node, slowest first."""

    REMOTE = 0
    DISK = 1
    HOST = 2
    GPU = 3

    @property
    def label(self) -> str:
        """The lower-case name used in metric labels, logs and the CLI (``"gpu"``)."""
        return self.name.lower()


HELD_TIERS: tuple[Tier, ...] = (Tier.DISK, Tier.HOST, Tier.GPU)
"""The tiers an agent holds weights in, slowest first (``REMOTE`` is where they come from)."""
