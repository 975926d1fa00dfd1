"""The policies ``prewarm bench`` compares, behind one interface (``prewarm.sim.engine.Policy``).

Names: ``reactive``, ``keepalive-10m``, ``hybrid-histogram``, ``tyche``, ``prewarm``, ``oracle``.

Every tunable policy also has a *sweep*: a handful of documented settings of its own knob, from
the least memory held to the most, so ``prewarm bench --sweep`` can draw its curve of cold starts
against idle GPU memory and compare policies at matched memory. Each sweep contains the policy's
own default, which is the point the named policy runs. ``reactive`` (KEDA's defaults, the floor
every policy shares) and ``oracle`` (a bound) have one point each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from planner.config import PlannerConfig
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

KEEPALIVE_SWEEP_MIN: tuple[float, ...] = (5.0, 10.0, 20.0, 30.0, 60.0)
"""Keep-alive windows (minutes) of ``keepalive-10m``'s sweep. Nothing shorter than 5 minutes: the
load scaler every policy shares keeps a model's last replica for its 5-minute scale-down window,
so 1 or 2 minutes would hold the same memory as 5."""

HYBRID_HISTOGRAM_SWEEP: tuple[tuple[float, float], ...] = (
    (25.0, 75.0),
    (10.0, 90.0),
    (5.0, 95.0),
    (5.0, 99.0),
    (1.0, 99.9),
)
"""(head, tail) idle-time percentiles of hybrid-histogram's sweep: the pre-warm window opens at
the head and the keep-alive window ends at the tail (Shahrad et al. use 5 and 99, the default);
narrower percentiles unload sooner and hold less."""

TYCHE_SWEEP: tuple[tuple[float, float], ...] = (
    (0.20, 0.80),
    (0.10, 0.90),
    (0.06, 0.94),
    (0.03, 0.97),
    (0.01, 0.99),
)
"""(p_load, p_offload) arrival-probability thresholds of Tyche's sweep (Sui et al. use 6 % and
94 %, the default): a lower load threshold pre-loads sooner, a higher offload one unloads later."""

PREWARM_IDLE_PRICE_SWEEP: tuple[float, ...] = (0.003, 0.001, 0.0004, 0.0002, 0.0001)
"""``PlannerConfig.idle_price`` values of prewarm's sweep, from the dearest idle memory (the least
held) to the cheapest; 0.0004 is the planner's default (``planner/config.py``)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One point of a policy's sweep: its knob's values (JSON keys) and a short label."""

    label: str
    params: Mapping[str, float]


def sweep_settings(name: str) -> tuple[Setting, ...]:
    """The settings ``prewarm bench --sweep`` runs policy ``name`` at (one, its own, when it has
    no knob swept), in the order of the documented constants above."""
    if name == "keepalive-10m":
        return tuple(Setting(f"keep {m:g} min", {"keep_s": 60.0 * m}) for m in KEEPALIVE_SWEEP_MIN)
    if name == "hybrid-histogram":
        return tuple(
            Setting(f"p{head:g}/p{tail:g}", {"head_percentile": head, "tail_percentile": tail})
            for head, tail in HYBRID_HISTOGRAM_SWEEP
        )
    if name == "tyche":
        return tuple(
            Setting(f"load {load:g}/off {off:g}", {"p_load": load, "p_offload": off})
            for load, off in TYCHE_SWEEP
        )
    if name == "prewarm":
        return tuple(
            Setting(f"idle_price {price:g}", {"idle_price": price})
            for price in PREWARM_IDLE_PRICE_SWEEP
        )
    if name in POLICY_NAMES:
        return (default_setting(name),)
    raise KeyError(name)


def default_setting(name: str) -> Setting:
    """The setting the named policy runs at by default (what ``make_policy(name, trace)`` builds),
    read from the policy itself."""
    if name == "keepalive-10m":
        keep = KeepAlivePolicy()
        return Setting(f"keep {keep.keep_s / 60.0:g} min", {"keep_s": keep.keep_s})
    if name == "hybrid-histogram":
        hybrid = HybridHistogramPolicy()
        return Setting(
            f"p{hybrid.head:g}/p{hybrid.tail:g}",
            {"head_percentile": hybrid.head, "tail_percentile": hybrid.tail},
        )
    if name == "tyche":
        tyche = TychePolicy()
        return Setting(
            f"load {tyche.p_load:g}/off {tyche.p_offload:g}",
            {"p_load": tyche.p_load, "p_offload": tyche.p_offload},
        )
    if name == "prewarm":
        price = PlannerConfig().idle_price
        return Setting(f"idle_price {price:g}", {"idle_price": price})
    if name in POLICY_NAMES:
        return Setting("default", {})
    raise KeyError(name)


def make_policy(name: str, trace: TickTrace, setting: Setting | None = None) -> Policy:
    """A fresh policy by name, at ``setting`` (one of :func:`sweep_settings`; default: the
    policy's own defaults); only the oracle is given the trace."""
    if setting is None or not setting.params:
        return _default_policy(name, trace)
    params = setting.params
    if name == "keepalive-10m":
        keep_s = params["keep_s"]
        return KeepAlivePolicy(keep_s, name=f"keepalive-{keep_s / 60.0:g}m")
    if name == "hybrid-histogram":
        return HybridHistogramPolicy(
            head_percentile=params["head_percentile"], tail_percentile=params["tail_percentile"]
        )
    if name == "tyche":
        return TychePolicy(p_load=params["p_load"], p_offload=params["p_offload"])
    if name == "prewarm":
        return PrewarmPolicy(PlannerConfig(idle_price=params["idle_price"]))
    raise KeyError(f"{name} has no setting {setting.label}")


def _default_policy(name: str, trace: TickTrace) -> Policy:
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
