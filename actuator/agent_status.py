"""Asking GPU agents for ``Status`` and reading their answers as the planner's node state.

Owns: the gRPC channels to agents (one per address, on the running event loop), one concurrent
round of ``Status`` calls each within ``agent.status_timeout_s``, and the reading of an answer:
:func:`node_state` (free memory and holdings) and :class:`LoadLedger` (each load reported once as a
weights stage observation). Used by the cluster observer and by runs without Kubernetes (the demo),
so that both read agents the same way. Must not: decide anything, or write to an agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import grpc

from actuator.agent_auth import agent_metadata
from actuator.config import AgentClientConfig
from common.errors import PrewarmError
from common.ids import ModelId, NodeName, PoolName
from common.tiers import Tier
from planner.leadtime import Stage, StageObservation
from planner.planner import NodeState
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from protos.tiers import tier_from_proto

ChannelFactory = Callable[[str], grpc.aio.Channel]

_WEIGHT_STAGE = {Tier.REMOTE: Stage.WEIGHTS_REMOTE, Tier.DISK: Stage.WEIGHTS_DISK,
                 Tier.HOST: Stage.WEIGHTS_HOST}  # fmt: skip
"""The weight stage of a load, by the tier it started from (as :mod:`planner.leadtime` keys it)."""


@dataclass(frozen=True, slots=True)
class AgentView:
    """What one node's agent said in this observation (``None`` fields: it did not answer)."""

    status: pb.StatusResponse | None = None
    problem: str = ""
    """Why the agent is unknown this tick (empty when it answered)."""


class AgentStatusReader:
    """Asks agents for ``Status``; an agent that fails only gets a ``problem`` in its view.

    ``channel_factory`` makes the gRPC channel to an address (default: plaintext). Call
    :meth:`close` at shutdown.
    """

    def __init__(
        self,
        config: AgentClientConfig,
        *,
        channel_factory: ChannelFactory = grpc.aio.insecure_channel,
    ) -> None:
        self._config = config
        self._channel_factory = channel_factory
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._channels_loop: asyncio.AbstractEventLoop | None = None

    async def close(self) -> None:
        """Close every agent channel."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    async def ask(self, targets: Mapping[NodeName, str]) -> dict[NodeName, AgentView]:
        """Each node's agent (node -> address) asked concurrently; channels to addresses no longer
        asked about are closed (that agent pod is gone or moved)."""
        loop = asyncio.get_running_loop()
        if self._channels_loop is not loop:
            # A gRPC aio channel belongs to the loop that made it; a new loop starts afresh.
            self._channels, self._channels_loop = {}, loop
        for address in set(self._channels) - set(targets.values()):
            await self._drop(address)
        async with asyncio.TaskGroup() as group:
            tasks = {node: group.create_task(self._status(a)) for node, a in targets.items()}
        return {node: task.result() for node, task in tasks.items()}

    async def _status(self, address: str) -> AgentView:
        timeout_s = self._config.status_timeout_s
        stub = pb_grpc.GpuAgentStub(self._channel(address))
        try:
            metadata = self._metadata()
        except PrewarmError as error:
            return AgentView(problem=f"Status at {address}: {error}")
        try:
            # The gRPC deadline bounds the call (connecting included); the outer timeout only
            # guards against a call that outlives its deadline.
            status = await asyncio.wait_for(
                stub.Status(pb.StatusRequest(), timeout=timeout_s, metadata=metadata),
                timeout_s + 1.0,
            )
        except grpc.aio.AioRpcError as error:
            # A fresh channel next time: a channel that failed to connect waits out gRPC's
            # reconnect backoff (up to minutes), longer than a restarted agent takes to come back.
            await self._drop(address)
            code = error.code()
            return AgentView(problem=f"Status at {address}: {code.name}: {error.details()}")
        except TimeoutError:
            await self._drop(address)
            return AgentView(problem=f"Status at {address}: no answer in {timeout_s:g} s")
        if not isinstance(status, pb.StatusResponse):
            # grpc.aio logs a response it cannot deserialize and hands back None instead.
            return AgentView(
                problem=f"Status at {address}: the answer is not a StatusResponse "
                "(is a prewarm GPU agent listening there?)"
            )
        return AgentView(status=status)

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = self._channel_factory(address)
        return self._channels[address]

    async def _drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return agent_metadata(self._config)


def node_state(name: NodeName, pool: PoolName, status: pb.StatusResponse) -> NodeState:
    """A node's memory and holdings from its agent's answer (InvalidInput: an unknown tier).

    ``free_gpu_bytes`` = sum over GPUs of free minus headroom (each never below 0; 0 without a
    GPU, and 0 for a GPU yielded to a starting replica: its agent refuses GPU-tier Preloads onto
    it until ``yielded_until``, and the replica is about to take the memory that looks free),
    ``free_host_bytes`` = the host tier's capacity minus used, ``holdings`` = each model's
    fastest tier.
    """
    free_gpu = 0
    if status.gpu_available:
        free_gpu = sum(
            max(0, g.free_bytes - g.headroom_bytes)
            for g in status.gpus
            if not g.HasField("yielded_until")  # the agent reports a hold only while it lasts
        )
    free_host: int | None = None
    for usage in status.tiers:
        if tier_from_proto(usage.tier) == Tier.HOST:
            free_host = max(0, usage.capacity_bytes - usage.used_bytes)
    holdings: dict[ModelId, Tier] = {}
    for holding in status.models:
        tier = tier_from_proto(holding.tier)
        if tier is None:
            continue
        model = ModelId(holding.model_id)
        holdings[model] = max(tier, holdings.get(model, Tier.REMOTE))
    return NodeState(
        name=name,
        pool=pool,
        free_gpu_bytes=free_gpu,
        free_host_bytes=free_host,
        holdings=holdings,
    )


def held_tier(model: ModelId, pool: PoolName, nodes: Sequence[NodeState]) -> Tier:
    """The fastest tier below GPU that an answering agent of ``pool`` holds ``model`` in (a model
    in GPU memory counts as HOST: a replica there attaches at least as fast as it reads host
    memory); REMOTE when none does."""
    held = [
        min(tier, Tier.HOST)
        for node in nodes
        if node.pool == pool and node.agent_seen
        for holder, tier in node.holdings.items()
        if holder == model
    ]
    return max(held, default=Tier.REMOTE)


class LoadLedger:
    """Each agent load reported once, as a weights stage observation keyed by pool.

    A load is reported by the tier it started from (``ModelHolding.load_duration_s``), once per
    ``loaded_at``, including loads that finished before the ledger started. A load that only
    reached the disk tier is a fetch, not a load into memory, and is not reported.
    """

    def __init__(self) -> None:
        self._loads: dict[NodeName, dict[str, int]] = {}

    def new_loads(
        self, node: NodeName, pool: PoolName, status: pb.StatusResponse
    ) -> list[StageObservation]:
        """The loads ``status`` reports that were not reported before (the node's record is
        replaced by what it holds now, so a model loaded again is reported again)."""
        before = self._loads.get(node, {})
        now: dict[str, int] = {}
        found: list[StageObservation] = []
        for holding in status.models:
            if holding.load_duration_s <= 0 or not holding.HasField("loaded_at"):
                continue
            stamp = holding.loaded_at.ToNanoseconds()
            now[holding.model_id] = stamp
            if before.get(holding.model_id) == stamp:
                continue
            source = tier_from_proto(holding.loaded_from) or Tier.REMOTE
            target = tier_from_proto(holding.loaded_to)
            stage = _WEIGHT_STAGE.get(source)
            if stage is None or target is None or target <= Tier.DISK:
                continue
            found.append(
                StageObservation(
                    stage, str(pool), holding.load_duration_s, holding.loaded_bytes / 1e9
                )
            )
        self._loads[node] = now
        return found

    def keep_only(self, nodes: Collection[str]) -> None:
        """Forget the nodes not in ``nodes`` (deleted: a node of the same name is a new one)."""
        self._loads = {n: loads for n, loads in self._loads.items() if n in nodes}
