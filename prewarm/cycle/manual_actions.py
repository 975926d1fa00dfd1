"""Manual overrides as plan actions: floors raised, tiers held, paused models frozen.

Owns: turning the :class:`prewarm.cycle.manual.ActiveOverrides` in force into the plan's actions
(:func:`with_overrides`). Pure: no I/O, no clock. The planner decides without them; this module
patches its plan, so a manual request shows in the plan, the metrics and ``prewarm explain``, and
obeys the per-tick budget caps like any action.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from common.ids import ModelId
from planner.actions import (
    Action,
    EngineSleep,
    Evict,
    Preload,
    ReplicaFloor,
    Tier,
    WarmPlan,
    WorkloadRef,
)
from planner.catalog import Catalog
from planner.placement import NodeState, Placement
from planner.planner import workload_for
from prewarm.cycle.manual import ActiveOverrides

MANUAL_VALUE_PER_BYTE = 1e-3
"""Value density given to manually requested holds: far above any forecast-derived one, so the
agent evicts them last."""


@dataclass(frozen=True, slots=True)
class ManualPlan:
    """A plan with the overrides in force, and each unpaused model's actions (what a pause
    freezes the model at)."""

    plan: WarmPlan
    frozen: Mapping[ModelId, tuple[Action, ...]]


def with_overrides(
    plan: WarmPlan,
    overrides: ActiveOverrides,
    *,
    catalog: Catalog,
    known_models: Iterable[ModelId],
    frozen: Mapping[ModelId, tuple[Action, ...]],
    nodes: Iterable[NodeState] = (),
) -> ManualPlan:
    """``plan`` with manual floors and tier holds in force, and paused models frozen (pure).

    A floor raises the model's ``ReplicaFloor`` (or adds one); a tier request or pin adds a
    ``Preload`` at that tier when the plan has none at it or faster, on an observed node of the
    model's pool (``nodes``; none while the pool has no node, or no room). A paused model keeps
    exactly the actions it had when it was paused (``frozen``: taking them away would be an action
    too).
    """
    placement = Placement(nodes)
    with_floors = apply_floors(plan, overrides, workload_of=lambda m: workload_for(catalog.spec(m)))
    actions = list(with_floors.actions)
    for model, target in overrides.tiers.items():
        held = any(
            isinstance(a, Preload) and a.model == model and a.tier >= target.tier for a in actions
        )
        if held or target.tier <= Tier.DISK:
            continue
        spec = catalog.spec(model)
        if target.tier is Tier.GPU:
            on = placement.gpu(model, spec.node_pool, spec.weights_bytes, 1)
        else:
            host = placement.host(model, spec.node_pool, spec.weights_bytes)
            on = [host] if host is not None else []
        actions.extend(
            Preload(
                model=model,
                node=node,
                tier=target.tier,
                bytes=spec.weights_bytes,
                deadline_s=plan.now_s,
                value_per_byte=MANUAL_VALUE_PER_BYTE,
                reason=target.reason,
                value=0.0,
            )
            for node in on
        )
    paused = {m for m in known_models if overrides.is_paused(m)}
    kept = [a for a in actions if model_of(a) not in paused] if paused else actions
    for model in paused:
        kept.extend(frozen.get(model, ()))
    by_model: dict[ModelId, list[Action]] = {}
    for action in kept:
        owner = model_of(action)
        if owner is not None and owner not in paused:
            by_model.setdefault(owner, []).append(action)
    still_frozen = {m: a for m, a in frozen.items() if m in paused}
    still_frozen.update({model: tuple(group) for model, group in by_model.items()})
    return ManualPlan(plan=WarmPlan(now_s=plan.now_s, actions=tuple(kept)), frozen=still_frozen)


def model_of(action: Action) -> ModelId | None:
    """The model an action is about (pool-level actions have none)."""
    return (
        action.model if isinstance(action, ReplicaFloor | Preload | Evict | EngineSleep) else None
    )


def apply_floors(
    plan: WarmPlan,
    overrides: ActiveOverrides,
    *,
    workload_of: Callable[[ModelId], WorkloadRef],
) -> WarmPlan:
    """``plan`` with the manual replica floors in force applied (pure).

    For each floor in ``overrides.floors``: the model's ``ReplicaFloor`` is raised to at least the
    manual ``min_replicas`` (keeping the later ``until_s``, and the request's reason in front), or
    one is added for ``workload_of(model)``. Nothing else changes, so a plan that already holds
    the floors comes back unchanged.
    """
    if not overrides.floors:
        return plan
    actions: list[Action] = []
    seen: set[ModelId] = set()
    for action in plan.actions:
        floor = overrides.floors.get(action.model) if isinstance(action, ReplicaFloor) else None
        if isinstance(action, ReplicaFloor) and floor is not None:
            seen.add(action.model)
            if action.min_replicas < floor.min_replicas:
                action = replace(
                    action,
                    min_replicas=floor.min_replicas,
                    until_s=max(action.until_s, floor.until_s),
                    reason=f"{floor.reason} (the plan alone: {action.min_replicas})",
                )
        actions.append(action)
    for model, floor in overrides.floors.items():
        if model not in seen:
            actions.append(
                ReplicaFloor(
                    model=model,
                    workload=workload_of(model),
                    min_replicas=floor.min_replicas,
                    until_s=floor.until_s,
                    reason=floor.reason,
                    value=0.0,
                )
            )
    return replace(plan, actions=tuple(actions))
