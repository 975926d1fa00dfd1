"""The daemon plans no GPU-tier Preload onto a GPU its agent yielded to a starting replica.

A real agent in this process (one GPU through a fake NVML: this machine has none), its real
Status read as the observer reads it (:func:`actuator.agent_status.node_state`), and the real
planner over that node.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from actuator.agent_status import node_state
from common.ids import ModelId, NodeName
from planner.actions import Preload, Tier
from planner.planner import PlannerState, plan
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.gpu_agent.fakes import FakeNvml
from tests.harness.node_agents import agent_server, node_agent_config
from tests.planner.helpers import context, forecast, spec

GIB = 1024**3
NODE = NodeName("gpu-1")


async def test_a_yielded_gpu_has_no_room_for_planned_gpu_preloads(tmp_path: Path) -> None:
    specs = [spec("hot", weights_gb=14.5)]
    pool = specs[0].node_pool
    config = node_agent_config(tmp_path / "agent", sources=tmp_path / "models")
    async with agent_server(config, node=NODE, nvml=FakeNvml(16 * GIB)) as served:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{served.port}")
        stub = pb_grpc.GpuAgentStub(channel)
        before = node_state(NODE, pool, await stub.Status(pb.StatusRequest()))
        await stub.YieldGpu(pb.YieldGpuRequest(reason="replica of hot starting"))
        after = node_state(NODE, pool, await stub.Status(pb.StatusRequest()))
        await channel.close()
    assert before.free_gpu_bytes == 15 * GIB
    assert after.free_gpu_bytes == 0

    def preloads(node: object) -> list[tuple[NodeName, Tier]]:
        ctx = context(specs, forecasts={"hot": forecast("hot", p_active=0.5)}, nodes=(node,))
        result = plan(ctx, PlannerState())
        return [(p.node, p.tier) for p in result.plan.of_type(Preload) if p.model == "hot"]

    assert preloads(before) == [(NODE, Tier.GPU)]
    # While the replica starts, the weights go to host memory only.
    assert preloads(after) == [(NODE, Tier.HOST)]
    assert ModelId("hot") not in after.holdings
