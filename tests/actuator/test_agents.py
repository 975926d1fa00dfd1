"""Preload/Evict against a real grpc.aio server built from protos/gpu_agent.proto (not the agent).

The server here is a test double of the agent's *behaviour* (it holds nothing), speaking the real
protocol on 127.0.0.1: it records every request and its metadata, and can be told to fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from kubernetes import client as k8s_client
from pydantic import SecretStr

from actuator.agents import AgentActuator, PodAddressResolver
from actuator.config import ActuatorConfig, AgentClientConfig
from actuator.kube import PODS, KubeClient
from common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    ResourceExhausted,
    TemporaryError,
)
from common.ids import ModelId, NodeName
from planner.actions import Evict, Preload, Tier
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.harness.k8s import make_kwok_nodes, wait_for
from tests.harness.workloads import apply_pod, pod_body

NOW = 1_800_000_000.0


class RecordingAgent(pb_grpc.GpuAgentServicer):
    """Answers Preload with QUEUED/FETCHING/DONE and Evict with bytes freed; records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.held: set[str] = set()
        self.fail_next: list[grpc.StatusCode] = []
        self.preloads: list[pb.PreloadRequest] = []

    async def _maybe_fail(self, context: grpc.aio.ServicerContext) -> None:
        if self.fail_next:
            await context.abort(self.fail_next.pop(0), "injected")

    async def Preload(  # noqa: N802
        self, request: pb.PreloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PreloadProgress]:
        self.calls.append(("Preload", request.model_id, dict(context.invocation_metadata() or ())))
        await self._maybe_fail(context)
        self.preloads.append(request)
        total = sum(source.size_bytes for source in request.weights)
        stages = pb.PreloadProgress
        for stage in (stages.STAGE_QUEUED, stages.STAGE_FETCHING, stages.STAGE_DONE):
            yield pb.PreloadProgress(
                model_id=request.model_id, stage=stage, bytes_done=total, bytes_total=total,
                tier=request.target_tier, elapsed_s=0.5,
            )  # fmt: skip
        self.held.add(request.model_id)

    async def Evict(  # noqa: N802
        self, request: pb.EvictRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvictResponse:
        self.calls.append(("Evict", request.model_id, dict(context.invocation_metadata() or ())))
        await self._maybe_fail(context)
        if request.model_id not in self.held:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.model_id} not held")
        self.held.discard(request.model_id)
        return pb.EvictResponse(model_id=request.model_id, bytes_freed=1000)


@pytest.fixture
async def agent() -> AsyncIterator[tuple[RecordingAgent, str]]:
    # The RPCs the actuator never calls stay UNIMPLEMENTED (the generated base class's default).
    servicer = RecordingAgent()  # type: ignore[abstract]
    server = grpc.aio.server()
    pb_grpc.add_GpuAgentServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(grace=None)


def weights_of(model: ModelId) -> list[pb.Source]:
    if model == "unknown":
        raise NotFound("unknown is not in the catalog")
    return [
        pb.Source(
            uri=f"file:///models/{model}/model.safetensors", sha256="ab" * 32, size_bytes=4096
        )
    ]


def make(address: str, **agent: object) -> AgentActuator:
    config = ActuatorConfig(agent=AgentClientConfig(**agent))

    async def address_of(node: NodeName) -> str:
        if node == "nowhere":
            raise NotFound("no agent on nowhere")
        return address

    async def no_sleep(_: float) -> None:
        return None

    return AgentActuator(config, address_of, weights_of=weights_of, sleep=no_sleep)


def preload(model: str = "llama-8b", tier: Tier = Tier.GPU) -> Preload:
    return Preload(
        model=ModelId(model), node=NodeName("gpu-0"), tier=tier, bytes=4096,
        deadline_s=NOW + 300, value_per_byte=0.1, reason="r", value=40.0,
    )  # fmt: skip


def evict(model: str = "old-70b") -> Evict:
    return Evict(model=ModelId(model), node=NodeName("gpu-0"), tier=Tier.GPU, reason="r", value=1)


async def test_preload_streams_to_done_with_deadline_and_token(
    agent: tuple[RecordingAgent, str],
) -> None:
    servicer, address = agent
    actuator = make(address, token=SecretStr("s3cret"))

    result = await actuator.preload(preload(), now_s=NOW)
    again = await actuator.preload(preload(), now_s=NOW)
    await actuator.close()

    assert result.ok, result.detail
    assert again.ok, again.detail
    assert "TIER_GPU" in result.detail
    request = servicer.preloads[0]
    assert request.model_id == "llama-8b"
    assert request.target_tier == pb.TIER_GPU
    assert request.weights[0].uri == "file:///models/llama-8b/model.safetensors"
    assert request.deadline.seconds == int(NOW + 300)
    assert request.predicted_value == 40.0
    assert servicer.calls[0][2]["authorization"] == "Bearer s3cret"


async def test_evict_is_idempotent(agent: tuple[RecordingAgent, str]) -> None:
    servicer, address = agent
    servicer.held.add("old-70b")
    actuator = make(address)

    first = await actuator.evict(evict())
    second = await actuator.evict(evict())  # NOT_FOUND: already gone, which is success
    await actuator.close()

    assert first.ok
    assert first.detail == "freed 1000 bytes"
    assert second.ok
    assert "not held" in second.detail


async def test_unavailable_is_retried_and_other_errors_are_not(
    agent: tuple[RecordingAgent, str],
) -> None:
    servicer, address = agent
    actuator = make(address)
    servicer.fail_next = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]

    retried = await actuator.preload(preload(), now_s=NOW)
    assert retried.ok
    assert [c[0] for c in servicer.calls] == ["Preload"] * 3

    servicer.fail_next = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    refused = await actuator.preload(preload("big"), now_s=NOW)
    await actuator.close()

    assert not refused.ok
    assert isinstance(refused.error, ResourceExhausted)
    assert [c[1] for c in servicer.calls].count("big") == 1


async def test_apply_evicts_first_and_isolates_failures(agent: tuple[RecordingAgent, str]) -> None:
    servicer, address = agent
    servicer.held.add("old-70b")
    actuator = make(address)
    nowhere = Preload(
        model=ModelId("x"), node=NodeName("nowhere"), tier=Tier.HOST, bytes=1,
        deadline_s=NOW + 60, value_per_byte=1.0, reason="r", value=1.0,
    )  # fmt: skip

    results = await actuator.apply(
        [preload("a"), preload("b", Tier.HOST), nowhere], [evict()], now_s=NOW
    )
    await actuator.close()

    assert servicer.calls[0][0] == "Evict"
    assert sorted(c[1] for c in servicer.calls[1:]) == ["a", "b"]
    assert [r.ok for r in results] == [True, True, True, False]
    assert isinstance(results[-1].error, NotFound)


async def test_unreachable_agent_becomes_a_failed_result() -> None:
    actuator = make("127.0.0.1:1", attempts=2, timeout_s=1.0)

    result = await actuator.evict(evict())
    await actuator.close()

    assert not result.ok
    assert isinstance(result.error, TemporaryError)  # UNAVAILABLE, retried, then given up


async def test_dry_run_calls_nothing(agent: tuple[RecordingAgent, str]) -> None:
    servicer, address = agent
    actuator = make(address)

    results = await actuator.apply([preload()], [evict()], now_s=NOW, dry_run=True)
    await actuator.close()

    assert all(r.ok and r.dry_run for r in results)
    assert servicer.calls == []


@pytest.fixture
def agent_pod(k8s_api: k8s_client.ApiClient, kube: KubeClient, config: ActuatorConfig) -> str:
    node = make_kwok_nodes(k8s_api, pool=f"agents-{config.namespace}", count=1)[0]
    labels = {"app.kubernetes.io/name": "prewarm-gpu-agent"}
    pod = pod_body(
        "agent",
        namespace=config.namespace,
        image="prewarm:dev",
        container="agent",
        node=node,
        labels=labels,
    )
    apply_pod(kube, pod)
    return node


@pytest.mark.k8s
async def test_pod_address_resolver_finds_the_agent_on_the_node(
    kube: KubeClient, config: ActuatorConfig, agent_pod: str
) -> None:
    resolver = PodAddressResolver(kube, config)
    path = PODS.path(config.namespace, "agent")
    pod = wait_for(
        lambda: (p := kube.get(path)) and p.get("status", {}).get("podIP") and p,
        what="kwok to run the agent pod",
    )

    address = await resolver(NodeName(agent_pod))

    assert address == f"{pod['status']['podIP']}:50061"
    with pytest.raises(NotFound, match="no running GPU agent"):
        await resolver(NodeName("no-such-node"))


async def test_a_bad_action_fails_alone(agent: tuple[RecordingAgent, str]) -> None:
    servicer, address = agent
    actuator = make(address)

    results = await actuator.apply(
        [preload("unknown"), preload("remote", Tier.REMOTE), preload("ok")], [], now_s=NOW
    )
    await actuator.close()

    assert [r.ok for r in results] == [False, False, True]
    assert isinstance(results[0].error, NotFound)
    assert isinstance(results[1].error, InvalidInput)
    assert [c[1] for c in servicer.calls] == ["ok"]


async def test_an_agent_write_after_the_lease_is_lost_is_refused_between_retries(
    agent: tuple[RecordingAgent, str],
) -> None:
    servicer, address = agent
    leading = [True]

    def fence() -> None:
        if not leading[0]:
            raise FailedPrecondition("no longer holds Lease prewarm/prewarm-leader")

    async def lose_the_lease(_: float) -> None:
        leading[0] = False  # the Lease runs out while the first attempt backs off

    actuator = AgentActuator(
        ActuatorConfig(), lambda node: _address(address), weights_of=weights_of,
        sleep=lose_the_lease, fence=fence,
    )  # fmt: skip
    servicer.fail_next = [grpc.StatusCode.UNAVAILABLE]
    (result,) = await actuator.apply([preload()], [], now_s=NOW)
    assert not result.ok
    assert "no longer holds Lease" in result.detail
    assert [call[0] for call in servicer.calls] == ["Preload"]  # the retry never went out
    await actuator.close()


async def _address(address: str) -> str:
    return address


async def test_the_token_file_is_read_at_every_call(
    agent: tuple[RecordingAgent, str], tmp_path: Path
) -> None:
    servicer, address = agent
    token = tmp_path / "token"
    token.write_text("first-token-0123456789\n")
    config = ActuatorConfig(agent=AgentClientConfig(token_file=str(token)))
    actuator = AgentActuator(config, lambda node: _address(address), weights_of=weights_of)
    await actuator.apply([preload()], [], now_s=NOW)
    token.write_text("rotated-token-0123456789")  # the Secret was rotated
    await actuator.apply([preload()], [], now_s=NOW)
    sent = [call[2].get("authorization") for call in servicer.calls]
    assert sent == ["Bearer first-token-0123456789", "Bearer rotated-token-0123456789"]
    token.unlink()  # a missing file fails the call with its reason, and nothing is sent
    (result,) = await actuator.apply([preload()], [], now_s=NOW)
    assert not result.ok
    assert "cannot read the agents' token file" in result.detail
    assert len(servicer.calls) == 2
    with pytest.raises(ValueError, match="not both"):
        AgentClientConfig(token=SecretStr("x" * 20), token_file=str(token))
    await actuator.close()
