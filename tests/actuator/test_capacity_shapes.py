"""The pure parts of fleet capacity: replica shapes, NodePool parsing, limit room (properties)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actuator.nodepools import parse_node_pool, pool_of
from actuator.placeholder_shapes import GPU_RESOURCE, PodShape, Room, workload_shape
from common.errors import InvalidInput
from planner.actions import WorkloadRef
from tests.harness.workloads import deployment_body

REF = WorkloadRef("ns", "x")


def test_a_shape_sums_containers_exactly_and_limits_stand_in_for_requests() -> None:
    body = deployment_body("x")
    body["spec"]["template"]["spec"]["containers"] = [
        {"name": "a", "image": "i",
         "resources": {"limits": {GPU_RESOURCE: 2, "cpu": "1500m", "memory": "1Gi"}}},
        {"name": "b", "image": "i",
         "resources": {"requests": {"cpu": "500m", "memory": "1Mi"},
                       "limits": {GPU_RESOURCE: "2"}}},
    ]  # fmt: skip
    shape = workload_shape(body, REF)
    assert (shape.gpus, shape.cpu, shape.memory) == (4, Decimal(2), Decimal(1024**3 + 1024**2))


def test_a_template_without_resources_or_with_a_bad_quantity_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"requests no whole number of nvidia\.com/gpu"):
        workload_shape(deployment_body("x"), REF)
    body = deployment_body("x")
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"limits": {GPU_RESOURCE: "1", "memory": "lots"}}
    with pytest.raises(InvalidInput, match="'lots' is not a Kubernetes quantity"):
        workload_shape(body, REF)


def node_pool(name: str, **spec: object) -> dict[str, object]:
    template = {"spec": {"requirements": spec.pop("requirements", [])}}
    if "labels" in spec:
        template["metadata"] = {"labels": spec.pop("labels")}
    return {"metadata": {"name": name}, "spec": {"template": template, **spec}}


def test_node_pool_names_its_pool_by_template_label_else_by_name() -> None:
    labelled = node_pool("gpu", labels={"prewarm.io/pool": "a100"})
    assert pool_of(labelled, "prewarm.io/pool") == "a100"
    assert pool_of(labelled, "karpenter.sh/nodepool") == "gpu"
    assert pool_of(node_pool("gpu"), "prewarm.io/pool") is None


def test_node_pool_requirements_and_limits() -> None:
    requirements = [
        {"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "In", "values": ["4", "8"]},
        {"key": "karpenter.k8s.aws/instance-gpu-memory", "operator": "In", "values": ["81920"]},
        {"key": "karpenter.azure.com/sku-gpu-count", "operator": "Gt", "values": ["16"]},
    ]
    info = parse_node_pool(
        node_pool("gpu", requirements=requirements, limits={GPU_RESOURCE: 16, "memory": "1Ti"}),
        "karpenter.sh/nodepool",
    )
    assert info is not None
    assert (info.gpus_per_node, info.gpu_memory_bytes) == (8, 81920 * 1024**2)
    assert info.limits == {GPU_RESOURCE: Decimal(16), "memory": Decimal(1024**4)}
    assert info.problem is None

    for limits, problem in [
        ({GPU_RESOURCE: "-1"}, "below 0"),
        ({GPU_RESOURCE: "1.5"}, "not a whole number"),
        ({"nodes": "0.5"}, "not a whole number"),
        ({"cpu": "many"}, "not a Kubernetes quantity"),
        (["cpu"], "not a map"),
    ]:
        bad = parse_node_pool(node_pool("bad", limits=limits), "karpenter.sh/nodepool")
        assert bad is not None
        assert bad.problem is not None
        assert problem in bad.problem
        assert bad.limits == {}


shapes = st.builds(
    PodShape,
    gpus=st.integers(1, 8),
    cpu=st.decimals(0, 64, places=3),
    memory=st.integers(0, 2**40).map(Decimal),
)
limits = st.dictionaries(
    st.sampled_from([GPU_RESOURCE, "cpu", "memory", "nodes"]),
    st.integers(-10, 10_000).map(Decimal),
)


@given(left=limits, gpus_per_node=st.one_of(st.none(), st.integers(1, 16)),
       asks=st.lists(st.tuples(shapes, st.integers(0, 50)), max_size=5))  # fmt: skip
def test_placeholders_never_ask_for_more_than_the_limits_leave(
    left: dict[str, Decimal], gpus_per_node: int | None, asks: list[tuple[PodShape, int]]
) -> None:
    room = Room(left, gpus_per_node)
    used: dict[str, Decimal] = {}
    nodes = Decimal(0)
    for shape, wanted in asks:
        taken = room.take(shape, wanted, what="x")
        assert 0 <= taken <= wanted
        for resource, amount in shape.requests().items():
            used[resource] = used.get(resource, Decimal(0)) + amount * taken
        if gpus_per_node is not None and taken:
            nodes += -(-taken // max(gpus_per_node // shape.gpus, 1))
    for resource, limit in left.items():
        if resource == "nodes":
            if gpus_per_node is not None:
                assert nodes <= max(limit, Decimal(0))
        elif resource in used:
            assert used[resource] <= max(limit, Decimal(0)) or used[resource] == 0
