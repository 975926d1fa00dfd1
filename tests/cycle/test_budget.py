from __future__ import annotations

from common.ids import ModelId, NodeName, PoolName
from planner.actions import Evict, ImagePrepull, NodeCapacity, Preload, Tier, WarmPlan
from prewarm.cycle.budget import cap_plan
from prewarm.cycle.config import BudgetConfig

POOL = PoolName("a100")


def _preload(model: str, size: int) -> Preload:
    return Preload(
        model=ModelId(model),
        node=NodeName("n1"),
        tier=Tier.GPU,
        bytes=size,
        deadline_s=0.0,
        value_per_byte=1.0,
        reason="r",
        value=1.0,
    )


def test_caps_clip_capacity_and_defer_the_rest() -> None:
    plan = WarmPlan(
        now_s=0.0,
        actions=(
            NodeCapacity(pool=POOL, gpus=10, reason="spike", value=5.0),
            ImagePrepull(pool=POOL, image="a", deadline_s=1.0, reason="r", value=1.0),
            ImagePrepull(pool=POOL, image="b", deadline_s=1.0, reason="r", value=1.0),
            _preload("m1", 60),
            _preload("m2", 60),
            Evict(model=ModelId("m3"), node=NodeName("n1"), tier=Tier.GPU, reason="r", value=0),
        ),
    )
    budget = BudgetConfig(max_nodes_added=3, max_prepulls=1, max_gpu_bytes=100)
    capped = cap_plan(plan, budget, current_placeholder_gpus={POOL: 2})
    capacity = capped.plan.of_type(NodeCapacity)
    assert [c.gpus for c in capacity] == [5]  # 2 held + 3 allowed
    assert [p.image for p in capped.plan.of_type(ImagePrepull)] == ["a"]
    assert [p.model for p in capped.plan.of_type(Preload)] == ["m1"]
    assert len(capped.plan.of_type(Evict)) == 1  # releases are never capped
    assert sorted(reason for _, reason in capped.deferred) == [
        "max_gpu_bytes",
        "max_nodes_added",
        "max_prepulls",
    ]


def test_shrinking_capacity_is_never_capped() -> None:
    plan = WarmPlan(now_s=0.0, actions=(NodeCapacity(pool=POOL, gpus=1, reason="r", value=0.0),))
    capped = cap_plan(plan, BudgetConfig(max_nodes_added=0), current_placeholder_gpus={POOL: 8})
    assert capped.plan.actions == plan.actions
    assert capped.deferred == ()
