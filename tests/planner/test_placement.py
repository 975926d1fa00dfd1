"""Preloads and evictions go to real, observed nodes of the model's pool, never to a pool name."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.ids import ModelId, NodeName, PoolName
from planner.actions import Evict, Preload, Tier
from planner.catalog import GB
from planner.config import PlannerConfig
from planner.placement import NodeState, Placement
from planner.planner import ModelState, PlannerState, plan
from tests.planner.helpers import context, forecast, spec

A, B = PoolName("a100"), PoolName("h100")
HOT = ModelId("hot")


def _node(name: str, pool: PoolName = A, **fields: object) -> NodeState:
    fields.setdefault("free_gpu_bytes", 100 * GB)
    return NodeState(name=NodeName(name), pool=pool, **fields)  # type: ignore[arg-type]


def test_gpu_preloads_prefer_holders_then_running_then_placeholders_then_the_rest() -> None:
    nodes = [
        _node("a-4"),
        _node("a-3", placeholder_gpus=2),
        _node("a-2", running=frozenset({HOT})),
        _node("a-1", holdings={HOT: Tier.GPU}, free_gpu_bytes=0),
        _node("b-1", pool=B),
    ]
    placement = Placement(nodes)
    assert placement.gpu(HOT, A, 20 * GB, 4) == ["a-1", "a-2", "a-3", "a-4"]
    assert placement.gpu(HOT, A, 20 * GB, 2) == ["a-1", "a-2"]


def test_room_is_taken_as_preloads_are_placed_and_unseen_agents_get_nothing() -> None:
    nodes = [_node("a-1", free_gpu_bytes=30 * GB), _node("a-2", agent_seen=False)]
    placement = Placement(nodes)
    assert placement.gpu(ModelId("m1"), A, 20 * GB, 1) == ["a-1"]
    assert placement.gpu(ModelId("m2"), A, 20 * GB, 1) == []  # 10 GB left, a-2 unknown
    assert not Placement([nodes[1]]).has_nodes(A)


def test_a_pool_without_a_node_waits_and_the_plan_says_so() -> None:
    specs = [spec("hot", weights_gb=14.5)]
    ctx = context(specs, forecasts={"hot": forecast("hot", p_active=0.5)}, nodes=())
    result = plan(ctx, PlannerState())
    assert result.models[HOT].target_replicas == 1  # the replica floor still stands
    assert not result.plan.of_type(Preload)
    assert "waiting for a node" in result.models[HOT].placement


def test_evictions_go_to_the_nodes_that_hold_the_model() -> None:
    specs = [spec("cold", weights_gb=14.5)]
    cold = ModelId("cold")
    nodes = (
        _node("gpu-1", pool=specs[0].node_pool, holdings={cold: Tier.GPU}),
        _node("gpu-2", pool=specs[0].node_pool),
        _node("gpu-3", pool=specs[0].node_pool, holdings={cold: Tier.HOST}),
    )
    ctx = context(
        specs,
        forecasts={"cold": forecast("cold", p_active=0.0)},
        states={"cold": ModelState(model=cold, ready_replicas=1)},
        nodes=nodes,
        config=PlannerConfig(host_min_value_density=1e9),  # host memory keeps nothing
    )
    result = plan(ctx, PlannerState(held=frozenset({cold}), host_held=frozenset({cold})))
    evictions = {(e.node, e.tier) for e in result.plan.of_type(Evict)}
    assert evictions == {(NodeName("gpu-1"), Tier.GPU), (NodeName("gpu-3"), Tier.HOST)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    p_active=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    seen=st.lists(st.booleans(), min_size=2, max_size=2),
    room_gb=st.lists(st.integers(0, 100), min_size=2, max_size=2),
    ready=st.lists(st.integers(0, 3), min_size=3, max_size=3),
)
def test_every_action_names_an_observed_node_of_the_models_pool(
    p_active: list[float], seen: list[bool], room_gb: list[int], ready: list[int]
) -> None:
    names = ["m0", "m1", "m2"]
    specs = [spec(n, weights_gb=14.5) for n in names]
    pool = specs[0].node_pool
    nodes = tuple(
        _node(f"n{k}", pool=pool, agent_seen=seen[k], free_gpu_bytes=room_gb[k] * GB)
        for k in range(2)
    )
    ctx = context(
        specs,
        forecasts={n: forecast(n, p_active=p) for n, p in zip(names, p_active, strict=True)},
        states={
            n: ModelState(model=ModelId(n), ready_replicas=r)
            for n, r in zip(names, ready, strict=True)
        },
        nodes=nodes,
    )
    result = plan(ctx, PlannerState())
    observed = {node.name for node in nodes if node.agent_seen}
    for action in result.plan.actions:
        if isinstance(action, Preload | Evict):
            assert action.node in observed
            assert action.node != str(pool)


def test_without_gpu_room_the_replicas_weights_are_preloaded_into_host_memory() -> None:
    specs = [spec("hot", weights_gb=14.5)]
    pool = specs[0].node_pool
    cpu_only = (_node("cpu-1", pool=pool, free_gpu_bytes=0, free_host_bytes=64 * GB),)
    ctx = context(specs, forecasts={"hot": forecast("hot", p_active=0.5)}, nodes=cpu_only)
    result = plan(ctx, PlannerState())
    preloads = [(p.node, p.tier) for p in result.plan.of_type(Preload)]
    assert preloads == [(NodeName("cpu-1"), Tier.HOST)]
    assert "host memory" in result.models[HOT].placement


def test_a_host_copy_for_lack_of_gpu_room_is_not_also_evicted_or_duplicated() -> None:
    specs = [spec("hot", weights_gb=14.5)]
    pool = specs[0].node_pool
    cpu_only = (_node("cpu-1", pool=pool, free_gpu_bytes=0, holdings={HOT: Tier.HOST}),)
    for host_min in (0.0, 1e9):  # host memory holding everything, or nothing on its own
        ctx = context(
            specs,
            forecasts={"hot": forecast("hot", p_active=0.5)},
            nodes=cpu_only,
            config=PlannerConfig(host_min_value_density=host_min),
        )
        result = plan(ctx, PlannerState(host_held=frozenset({HOT})))
        assert [(p.node, p.tier) for p in result.plan.of_type(Preload)] == [
            (NodeName("cpu-1"), Tier.HOST)
        ]
        assert not result.plan.of_type(Evict)


def test_a_model_that_needs_the_host_memory_evicts_a_lower_valued_one_on_its_node() -> None:
    # One CPU-only node whose host tier holds 20 GB: "idle" (held there) and "hot" (about to be
    # needed) do not both fit; hot's replica has no GPU room, so its copy takes the host memory
    # and idle is evicted from that node in the same plan.
    specs = [spec("hot", weights_gb=14.5), spec("idle", weights_gb=14.5)]
    pool = specs[0].node_pool
    idle = ModelId("idle")
    node = _node(
        "cpu-1",
        pool=pool,
        free_gpu_bytes=0,
        free_host_bytes=round(5.5 * GB),
        holdings={idle: Tier.HOST},
    )
    ctx = context(
        specs,
        forecasts={"hot": forecast("hot", p_active=0.9), "idle": forecast("idle", p_active=0.0)},
        nodes=(node,),
    )
    result = plan(ctx, PlannerState(host_held=frozenset({idle})))
    assert [(e.model, e.node, e.tier) for e in result.plan.of_type(Evict)] == [
        (idle, NodeName("cpu-1"), Tier.HOST)
    ]
    assert [(p.model, p.node, p.tier) for p in result.plan.of_type(Preload)] == [
        (HOT, NodeName("cpu-1"), Tier.HOST)
    ]
