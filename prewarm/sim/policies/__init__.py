"""The policies ``prewarm bench`` compares, behind one interface (``prewarm.sim.engine.Policy``).

Names: ``reactive``, ``keepalive-10m``, ``hybrid-histogram``, ``tyche``, ``prewarm``, ``oracle``.
"""

from __future__ import annotations

from prewarm.sim.engine import Policy, TickTrace
from prewarm.sim.policies.baselines import (
    HybridHistogramPolicy,
    KeepAlivePolicy,
    ReactivePolicy,
    TychePolicy,
)
from prewarm.sim.policies.oracle import OraclePolicy
from prewarm.sim.policies.prewarm_policy import PrewarmPolicy

POLICY_NAMES: tuple[str, ...] = (
    "reactive",
    "keepalive-10m",
    "hybrid-histogram",
    "tyche",
    "prewarm",
    "oracle",
)


def make_policy(name: str, trace: TickTrace) -> Policy:
    """A fresh policy by name; only the oracle is given the trace."""
    if name == "reactive":
        return ReactivePolicy()
    if name == "keepalive-10m":
        return KeepAlivePolicy(600.0, name="keepalive-10m")
    if name == "hybrid-histogram":
        return HybridHistogramPolicy()
    if name == "tyche":
        return TychePolicy()
    if name == "oracle":
        return OraclePolicy(trace)
    if name == "prewarm":
        return PrewarmPolicy()
    raise KeyError(name)
