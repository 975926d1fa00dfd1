"""GPU agents: Preload and Evict over gRPC (protos/gpu_agent.proto), one agent per node.

Owns turning :class:`planner.actions.Preload` / :class:`planner.actions.Evict` into agent calls:
finding the agent of a node (a constructor parameter; :class:`PodAddressResolver` is the production
default: the agent DaemonSet's pod on that node), the weights to fetch and the compiled artifacts
to install (constructor parameters: the plan names a model, the catalog knows its files),
deadlines, bearer-token metadata, retrying UNAVAILABLE with backoff, treating "already there" /
"already gone" as success (both RPCs are idempotent), and mapping every other status to a
:mod:`common.errors` kind through :mod:`common.grpc_status` (the one mapping).

Must not: import the agent's server side, or decide what to load (the plan does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from actuator.agent_auth import agent_metadata
from actuator.config import ActuatorConfig
from actuator.kube import PODS, KubeClient, Obj
from common.errors import InvalidInput, NotFound, PrewarmError, TemporaryError
from common.grpc_status import error_for
from common.ids import ModelId, NodeName
from common.tiers import HELD_TIERS
from planner.actions import Evict, Preload
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from protos.tiers import agent_tier

_log = logging.getLogger(__name__)

AddressOf = Callable[[NodeName], Awaitable[str]]
"""Returns ``host:port`` of the GPU agent on a node; raises NotFound when the node has none."""

WeightsOf = Callable[[ModelId], Sequence[pb.Source]]
"""Returns the weight files of a model (from the model catalog); raises NotFound if unknown."""

ArtifactsOf = Callable[[ModelId], Sequence[pb.Artifact]]
"""Returns the compiled artifacts sent with every Preload of a model (from the model catalog)."""


def no_artifacts(model: ModelId) -> Sequence[pb.Artifact]:
    """The default :data:`ArtifactsOf`: no model has compiled artifacts."""
    return ()


ChannelFactory = Callable[[str], grpc.aio.Channel]


@dataclass(frozen=True, slots=True)
class AgentResult:
    """Outcome of one agent action. ``ok`` False carries the error kind and message."""

    action: Preload | Evict
    ok: bool
    detail: str
    dry_run: bool = False
    error: PrewarmError | None = None


AGENT_ADDRESS_ANNOTATION = "prewarm.io/agent-address"
"""Agent pod annotation ``host:port``: where to call that pod's agent, instead of its pod IP."""

AGENT_PORT_NAME = "grpc"
"""The name of the agent container's gRPC port (the chart's DaemonSet names it so)."""


def agent_address(pod: Obj, *, default_port: int) -> str:
    """``host:port`` of the agent in a Running agent ``pod``.

    The :data:`AGENT_ADDRESS_ANNOTATION` wins (tests run several agents on one host, each on its
    own port; a host-network agent may listen elsewhere); else the pod IP and the container port
    named :data:`AGENT_PORT_NAME`, else ``default_port``. Raises :class:`InvalidInput` for an
    annotation that is not ``host:port`` and :class:`NotFound` for a pod without an IP.
    """
    metadata = pod.get("metadata") or {}
    where = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
    annotation = (metadata.get("annotations") or {}).get(AGENT_ADDRESS_ANNOTATION)
    if annotation is not None:
        return _host_port(str(annotation), where)
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise NotFound(f"agent pod {where} has no pod IP yet")
    port = default_port
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == AGENT_PORT_NAME and declared.get("containerPort"):
                port = int(declared["containerPort"])
    # An IPv6 pod IP needs brackets to take a port.
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"{host}:{port}"


def _host_port(value: str, where: str) -> str:
    host, sep, port = value.strip().rpartition(":")
    bare = host.removeprefix("[").removesuffix("]")
    if (
        not sep
        or not bare
        or any(c.isspace() or c in "/@" for c in bare)
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
    ):
        raise InvalidInput(
            f"agent pod {where}: annotation {AGENT_ADDRESS_ANNOTATION}={value!r} is not "
            "host:port (e.g. 10.0.0.5:50061 or [fd00::5]:50061); fix or remove it"
        )
    return f"{host}:{int(port)}"


def running_agent_pods(pods: Sequence[Obj]) -> dict[NodeName, Obj]:
    """The agent pod to call on each node: the first Running one with a node (list order)."""
    found: dict[NodeName, Obj] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (pod.get("status") or {}).get("phase") == "Running":
            found.setdefault(NodeName(node), pod)
    return found


class PodAddressResolver:
    """Finds a node's agent: the Running pod of the agent DaemonSet on that node, at the address
    :func:`agent_address` reads from it (annotation, else pod IP and its ``grpc`` port)."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config

    async def __call__(self, node: NodeName) -> str:
        pods = await asyncio.to_thread(
            self._kube.list,
            PODS.path(self._config.namespace),
            label_selector=self._config.agent.label_selector,
            field_selector=f"spec.nodeName={node}",
        )
        pod = running_agent_pods(pods).get(node)
        if pod is None:
            raise NotFound(f"no running GPU agent on node {node}; is the agent DaemonSet there?")
        return agent_address(pod, default_port=self._config.agent.port)


class AgentActuator:
    """Sends Preload/Evict to the agents (asyncio; one instance per daemon)."""

    def __init__(
        self,
        config: ActuatorConfig,
        address_of: AddressOf,
        *,
        weights_of: WeightsOf,
        artifacts_of: ArtifactsOf = no_artifacts,
        channel_factory: ChannelFactory = grpc.aio.insecure_channel,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._fence = fence
        self._address_of = address_of
        self._weights_of = weights_of
        self._artifacts_of = artifacts_of
        self._channel_factory = channel_factory
        self._sleep = sleep
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        """Close every channel (call at shutdown)."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def preload(self, action: Preload, *, now_s: float, dry_run: bool = False) -> AgentResult:
        """Have the agent on ``action.node`` hold ``action.model`` in ``action.tier``.

        The gRPC deadline is the action's deadline (at least ``agent.timeout_s`` from now): a load
        of tens of GB takes minutes, and the agent stops the load when the deadline passes.
        """
        try:
            if action.tier not in HELD_TIERS:
                raise InvalidInput(f"cannot preload {action.model} into tier {action.tier.name}")
            weights = list(self._weights_of(action.model))
            artifacts = list(self._artifacts_of(action.model))
        except PrewarmError as error:
            # A bad action (unknown model, no weights in the catalog) fails alone.
            return AgentResult(action, False, str(error), error=error)
        # Artifacts go with every Preload: the agent installs them whenever it loads the model or
        # moves it to a faster tier; one already held in the target tier is answered "already
        # held" without reinstalling them.
        request = pb.PreloadRequest(
            model_id=action.model,
            weights=weights,
            artifacts=artifacts,
            target_tier=agent_tier(action.tier),
            predicted_value=action.value,
            deadline=_timestamp(action.deadline_s),
        )
        if dry_run or self._config.dry_run:
            files = f"{len(request.weights)} file(s), {len(request.artifacts)} artifact(s)"
            return AgentResult(action, True, f"dry run: would preload {files}", True)
        timeout = max(action.deadline_s - now_s, self._config.agent.timeout_s)

        async def call(stub: pb_grpc.GpuAgentStub) -> str:
            last: pb.PreloadProgress | None = None
            async for progress in stub.Preload(request, timeout=timeout, metadata=self._metadata()):
                last = progress
            if last is None or last.stage != pb.PreloadProgress.STAGE_DONE:
                raise TemporaryError(f"preload of {action.model} ended before STAGE_DONE")
            tier = pb.Tier.Name(last.tier)
            held = f"held in {tier} ({last.bytes_total} bytes, {last.elapsed_s:.1f} s)"
            return f"{held} {last.message}".strip()

        return await self._run(action, call)

    async def evict(self, action: Evict, *, dry_run: bool = False) -> AgentResult:
        """Have the agent on ``action.node`` drop ``action.model`` from ``action.tier``.

        ``Tier.REMOTE`` means every tier. A model the agent does not hold is already evicted:
        NOT_FOUND counts as success.
        """
        request = pb.EvictRequest(model_id=action.model, tier=agent_tier(action.tier))
        if dry_run or self._config.dry_run:
            return AgentResult(action, True, "dry run: would evict", True)

        async def call(stub: pb_grpc.GpuAgentStub) -> str:
            try:
                response = await stub.Evict(
                    request, timeout=self._config.agent.timeout_s, metadata=self._metadata()
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return "not held (nothing to evict)"
                raise
            return f"freed {response.bytes_freed} bytes"

        return await self._run(action, call)

    async def apply(
        self,
        preloads: Sequence[Preload],
        evicts: Sequence[Evict],
        *,
        now_s: float,
        dry_run: bool = False,
    ) -> list[AgentResult]:
        """Evictions first (they free the memory preloads need), then preloads; each phase runs
        concurrently up to ``agent.max_concurrency``. One failure never stops the others."""
        limit = asyncio.Semaphore(self._config.agent.max_concurrency)

        async def bounded(work: Awaitable[AgentResult]) -> AgentResult:
            async with limit:
                return await work

        results: list[AgentResult] = []
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(bounded(self.evict(e, dry_run=dry_run))) for e in evicts]
        results += [task.result() for task in tasks]
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(bounded(self.preload(p, now_s=now_s, dry_run=dry_run)))
                for p in preloads
            ]
        results += [task.result() for task in tasks]
        return results

    async def _run(
        self, action: Preload | Evict, call: Callable[[pb_grpc.GpuAgentStub], Awaitable[str]]
    ) -> AgentResult:
        agent = self._config.agent
        backoff = 0.2
        for attempt in range(1, agent.attempts + 1):
            try:
                if self._fence is not None:
                    self._fence()  # every attempt: an old leader stops once it lost the Lease
                address = await self._address_of(action.node)
                stub = pb_grpc.GpuAgentStub(self._channel(address))
                detail = await call(stub)
                _log.info("agent on %s: %s %s %s: %s", action.node, type(action).__name__,
                          action.model, action.tier.label, detail)  # fmt: skip
                return AgentResult(action, True, detail)
            except grpc.aio.AioRpcError as rpc_error:
                error = error_for(rpc_error.code(), rpc_error.details() or "")
            except PrewarmError as prewarm_error:
                error = prewarm_error
            retryable = isinstance(error, TemporaryError)
            if not retryable or attempt == agent.attempts:
                _log.warning("agent on %s: %s %s failed: %s", action.node,
                             type(action).__name__, action.model, error)  # fmt: skip
                return AgentResult(action, False, str(error), error=error)
            await self._sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = self._channel_factory(address)
        return self._channels[address]

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return agent_metadata(self._config.agent)


def _timestamp(epoch_s: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(epoch_s * 1e9))
    return stamp
