"""Small builders for planner tests: forecasts with a given activity, model states, contexts."""

from __future__ import annotations

import numpy as np

from common.ids import ModelId, NodeName, PoolName
from forecaster.types import Forecast
from planner.actions import Tier
from planner.catalog import Catalog, ModelSpec, default_spec
from planner.config import PlannerConfig
from planner.planner import ModelState, NodeState, PlanContext, PoolState

STEP_S = 60.0


def forecast(
    model: str,
    *,
    p_active: float,
    rate_rps: float = 0.0,
    start_s: float = 0.0,
    horizon: int = 20,
) -> Forecast:
    """A flat forecast: P(active) per step and a request rate (mean and both quantiles)."""
    counts = np.full(horizon, rate_rps * STEP_S)
    return Forecast(
        model=ModelId(model),
        start_s=start_s,
        step_s=STEP_S,
        mean=counts.copy(),
        quantiles=(0.5, 0.9),
        values=np.stack([counts, counts]),
        p_active=np.full(horizon, p_active),
        method="test",
    )


def spec(model: str, **changes: object) -> ModelSpec:
    """A catalog entry: the model's defaults with ``changes``."""
    from dataclasses import replace

    return replace(default_spec(ModelId(model)), defaulted=False, **changes)  # type: ignore[arg-type]


def context(
    specs: list[ModelSpec],
    *,
    forecasts: dict[str, Forecast] | None = None,
    states: dict[str, ModelState] | None = None,
    now_s: float = 0.0,
    config: PlannerConfig | None = None,
    pools: dict[PoolName, PoolState] | None = None,
    nodes: tuple[NodeState, ...] | None = None,
) -> PlanContext:
    """A planning context over ``specs`` (models without a state are idle and cold). Without
    ``nodes``, each pool has one roomy node whose agent holds what the states say: models with
    replicas in GPU memory, others in their observed tier."""
    states = states or {}
    return PlanContext(
        now_s=now_s,
        interval_s=STEP_S,
        forecasts={ModelId(k): v for k, v in (forecasts or {}).items()},
        models={s.model: states.get(str(s.model), ModelState(model=s.model)) for s in specs},
        catalog=Catalog(specs={s.model: s for s in specs}),
        config=config or PlannerConfig(),
        pools=pools or {},
        nodes=nodes if nodes is not None else one_node_per_pool(specs, states),
    )


def one_node_per_pool(
    specs: list[ModelSpec], states: dict[str, ModelState]
) -> tuple[NodeState, ...]:
    """A node ``<pool>-0`` per pool, with room for anything, holding what ``states`` say."""
    holdings: dict[PoolName, dict[ModelId, Tier]] = {}
    running: dict[PoolName, set[ModelId]] = {}
    for s in specs:
        held = holdings.setdefault(s.node_pool, {})
        running.setdefault(s.node_pool, set())
        state = states.get(str(s.model))
        if state is None:
            continue
        if state.current_replicas > 0:
            held[s.model] = Tier.GPU
            running[s.node_pool].add(s.model)
        elif state.tier > Tier.REMOTE:
            held[s.model] = state.tier
    return tuple(
        NodeState(
            name=NodeName(f"{pool}-0"),
            pool=pool,
            free_gpu_bytes=10**15,
            holdings=held,
            running=frozenset(running[pool]),
        )
        for pool, held in holdings.items()
    )
