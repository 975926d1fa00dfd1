"""Per-tick budget caps: how much one tick may start, so a bad forecast cannot run away.

Pure. Caps apply to what a tick *adds*: placeholder GPUs above what the pool already holds,
image pre-pulls started, and bytes of GPU preloads. Actions over a cap are deferred (they come back
in the next plan and may fit then); actions that release resources (evictions, lower floors) are
never capped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from common.ids import ModelId, PoolName
from planner.actions import Action, ImagePrepull, NodeCapacity, Preload, Tier, WarmPlan
from prewarm.cycle.config import BudgetConfig


@dataclass(frozen=True, slots=True)
class CappedPlan:
    """The plan to apply now and the actions deferred by a cap (with the cap's name)."""

    plan: WarmPlan
    deferred: tuple[tuple[Action, str], ...]


def cap_plan(
    plan: WarmPlan,
    budget: BudgetConfig,
    *,
    current_placeholder_gpus: Mapping[PoolName, int],
    gpu_preloaded: Collection[ModelId] = frozenset(),
) -> CappedPlan:
    """Keep the plan's actions in order until each cap is reached; defer the rest.

    ``gpu_preloaded`` are models whose GPU preload was applied last tick: repeating it adds
    nothing, so it does not count against ``max_gpu_bytes``.

    A ``NodeCapacity`` above the cap is not dropped but clipped to what the cap allows (the
    remainder is deferred), so capacity still grows toward the target tick by tick.
    """
    kept: list[Action] = []
    deferred: list[tuple[Action, str]] = []
    gpus_left = budget.max_nodes_added
    prepulls_left = budget.max_prepulls
    bytes_left = budget.max_gpu_bytes
    for action in plan.actions:
        if isinstance(action, NodeCapacity):
            current = current_placeholder_gpus.get(action.pool, 0)
            added = max(0, action.gpus - current)
            if added <= gpus_left:
                gpus_left -= added
                kept.append(action)
                continue
            allowed = current + gpus_left
            gpus_left = 0
            if allowed > current:
                # The demands stay: the actuator holds them in order up to the clipped GPUs.
                reason = f"{action.reason} (clipped by max_nodes_added)"
                kept.append(replace(action, gpus=allowed, reason=reason))
            deferred.append((action, "max_nodes_added"))
        elif isinstance(action, ImagePrepull):
            if prepulls_left > 0:
                prepulls_left -= 1
                kept.append(action)
            else:
                deferred.append((action, "max_prepulls"))
        elif isinstance(action, Preload) and action.tier is Tier.GPU:
            if action.model in gpu_preloaded:
                kept.append(action)
            elif action.bytes <= bytes_left:
                bytes_left -= action.bytes
                kept.append(action)
            else:
                deferred.append((action, "max_gpu_bytes"))
        else:
            kept.append(action)
    return CappedPlan(
        plan=WarmPlan(now_s=plan.now_s, actions=tuple(kept)), deferred=tuple(deferred)
    )
