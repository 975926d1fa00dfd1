"""The GPU agent's gRPC server: the GpuAgent service, health, reflection, auth and lifecycle.

Owns the translation between proto requests and :class:`gpu_agent.agent.Agent` calls, the mapping
of error kinds to status codes (through :mod:`common.grpc_status`, nowhere else), bearer-token and
mTLS authentication, and the lifecycle: SIGTERM/SIGINT → health NOT_SERVING → stop with a grace
period → exit. It must not hold model state or decide evictions (that is the agent's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.errors import InvalidInput, PrewarmError, Unauthenticated
from common.grpc_status import status_for
from common.http_endpoints import ProbeServer
from common.ids import ModelId
from common.tiers import Tier
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.metrics import AgentMetrics
from gpu_agent.specs import ArtifactSpec, PreloadSpec, SourceSpec
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from protos.tiers import tier_from_proto

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GpuAgent"].full_name
UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/",)
"""Kubelet gRPC probes carry no token, so health checks are open (they reveal nothing)."""


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: PrewarmError) -> None:
    await context.abort(status_for(error), str(error))


def preload_spec(request: pb.PreloadRequest) -> PreloadSpec:
    """The agent's view of a PreloadRequest (no validation beyond types and the tier enum; the
    agent validates). An unspecified target tier is the GPU."""
    deadline = None
    if request.HasField("deadline"):
        deadline = request.deadline.ToNanoseconds() / 1e9
    return PreloadSpec(
        model_id=ModelId(request.model_id),
        weights=tuple(
            SourceSpec(s.uri, s.sha256, path=s.path, size_bytes=s.size_bytes)
            for s in request.weights
        ),
        artifacts=tuple(
            ArtifactSpec(SourceSpec(a.source.uri, a.source.sha256), a.kind, a.install_dir)
            for a in request.artifacts
        ),
        target_tier=tier_from_proto(request.target_tier) or Tier.GPU,
        predicted_value=request.predicted_value,
        deadline_unix_s=deadline,
        gpu_uuid=request.gpu_uuid,
        allow_pickle=request.allow_pickle,
        revision=request.revision,
    )


class GpuAgentService(pb_grpc.GpuAgentServicer):
    """The GpuAgent RPCs over an :class:`Agent`."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def Preload(  # noqa: N802 - gRPC method names
        self, request: pb.PreloadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.PreloadProgress]:
        try:
            stream = self._agent.preload(
                preload_spec(request), grpc_time_remaining_s=context.time_remaining()
            )
            async for progress in stream:
                yield progress
        except PrewarmError as error:
            await _abort(context, error)

    async def Evict(  # noqa: N802
        self, request: pb.EvictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EvictResponse:
        try:
            return await self._agent.evict(
                request.model_id, tier=tier_from_proto(request.tier), force=request.force
            )
        except PrewarmError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def Status(  # noqa: N802
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusResponse:
        return await asyncio.to_thread(self._agent.status)

    async def Watch(  # noqa: N802
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Event]:
        async for event in self._agent.events(list(request.model_ids)):
            yield event

    async def Attach(  # noqa: N802
        self, request: pb.AttachRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AttachResponse:
        try:
            return self._agent.attach(
                request.model_id,
                max_tier=tier_from_proto(request.max_tier) or Tier.GPU,
                client_pid=request.client_pid,
                lease_ttl_s=request.lease_ttl_s,
                lease_only=request.lease_only,
            )
        except PrewarmError as error:
            await _abort(context, error)
            raise

    async def Release(  # noqa: N802
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReleaseResponse:
        try:
            self._agent.release(request.lease_id)
        except PrewarmError as error:
            await _abort(context, error)
        return pb.ReleaseResponse()

    async def RenewLease(  # noqa: N802
        self, request: pb.RenewLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RenewLeaseResponse:
        try:
            return pb.RenewLeaseResponse(lease_ttl_s=self._agent.renew_lease(request.lease_id))
        except PrewarmError as error:
            await _abort(context, error)
            raise


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without ``authorization: Bearer <token>`` (health checks excepted)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            error = Unauthenticated("missing or wrong bearer token (authorization metadata)")
            await context.abort(status_for(error), str(error))

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(UNAUTHENTICATED_METHODS):
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        presented = b""
        for key, value in metadata:
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(presented, self._expected):
            return await continuation(handler_call_details)
        return self._deny


def server_credentials(config: AgentConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for mode=mtls (client certificates required); ``None`` otherwise."""
    auth = config.auth
    if auth.mode != "mtls":
        return None
    assert auth.tls_cert_file
    assert auth.tls_key_file
    assert auth.client_ca_file
    try:
        key = Path(auth.tls_key_file).read_bytes()
        cert = Path(auth.tls_cert_file).read_bytes()
        ca = Path(auth.client_ca_file).read_bytes()
    except OSError as error:
        raise InvalidInput(f"cannot read TLS files for the agent: {error}") from error
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


async def serve(
    config: AgentConfig,
    *,
    agent: Agent | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the agent until ``stop`` is set (or SIGTERM/SIGINT when ``handle_signals``).

    Recovers the tiers first (a previous process may have been killed mid-load), then serves
    GpuAgent, health and reflection on ``config.listen``; ``on_ready`` gets the bound port. On
    stop: health goes NOT_SERVING, then the server stops with ``shutdown_grace_s`` of grace.
    """
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    agent = agent if agent is not None else Agent(config)
    await asyncio.to_thread(agent.recover)
    agent.bind_loop(loop)

    interceptors = []
    if config.auth.mode == "token":
        assert config.auth.token is not None
        interceptors.append(BearerTokenInterceptor(config.auth.token.get_secret_value()))
    server = grpc.aio.server(interceptors=interceptors)
    pb_grpc.add_GpuAgentServicer_to_server(GpuAgentService(agent), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    credentials = server_credentials(config)
    if credentials is None:
        port = server.add_insecure_port(config.listen)
    else:
        port = server.add_secure_port(config.listen, credentials)
    if port == 0:
        raise InvalidInput(f"cannot listen on {config.listen}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(SERVICE_NAME, serving)
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    log.info(
        "gpu agent serving",
        extra={"port": port, "gpu_unavailable": agent.gpu_unavailable_reason() or ""},
    )
    probes: ProbeServer | None = None
    if config.metrics_port is not None:
        serving_now = {"value": True}
        probes = ProbeServer(
            AgentMetrics(agent).registry,
            ready=lambda: serving_now["value"],
            port=config.metrics_port,
        )
        await probes.start()
        log.info("gpu agent metrics", extra={"port": probes.port})
    if on_ready is not None:
        on_ready(port)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(agent.watch_pressure(stop))
            tasks.create_task(agent.watch_leases(stop))
            await stop.wait()
    finally:
        # Tell load balancers and kubelet first, then let in-flight calls finish.
        await health_servicer.enter_graceful_shutdown()
        if probes is not None:
            serving_now["value"] = False
        await server.stop(config.shutdown_grace_s)
        if probes is not None:
            await probes.stop()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(signum)
