"""The GPU agent's gRPC server: the GpuAgent service, health, reflection, auth and lifecycle.

Owns the translation between proto requests and :class:`gpu_agent.agent.Agent` calls (request
bytes that do not decode, and fields no valid request has, are INVALID_ARGUMENT, never UNKNOWN),
the mapping of error kinds to status codes (through :mod:`common.grpc_status`, nowhere else),
bearer-token and mTLS authentication, the start-up checks (a token in token mode, tier roots of
the agent's own), and the lifecycle: SIGTERM/SIGINT → health NOT_SERVING → stop with a grace
period → exit. Reflection is served only when ``agent.reflection`` asks. It must not hold model
state or decide evictions (that is the agent's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.errors import InvalidInput, PrewarmError, Unauthenticated
from common.grpc_status import status_for
from common.http_endpoints import ProbeServer
from common.ids import ModelId
from common.tiers import Tier
from gpu_agent.agent import Agent
from gpu_agent.announce import cuda_mismatch, serving_fields
from gpu_agent.auth import BearerToken, checked_listen
from gpu_agent.config import AgentConfig
from gpu_agent.metrics import AgentMetrics
from gpu_agent.specs import ArtifactSpec, PreloadSpec, SourceSpec
from gpu_agent.tier_roots import check_tier_roots
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
        try:
            deadline = request.deadline.ToNanoseconds() / 1e9
        except ValueError as error:
            # protobuf refuses Timestamps outside 0001-01-01..9999-12-31 or with nanos outside
            # [0, 1e9): no valid client sends one.
            raise InvalidInput(
                f"deadline is not a valid Timestamp ({error}); send the wall-clock time the "
                "load must finish by, or leave it unset"
            ) from error
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
                client_pid_namespace=request.client_pid_namespace,
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
            await self._agent.release(request.lease_id)
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

    async def YieldGpu(  # noqa: N802
        self, request: pb.YieldGpuRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.YieldGpuResponse:
        try:
            return await self._agent.yield_gpu(
                list(request.gpu_uuids), reason=request.reason, hold_s=request.hold_s
            )
        except PrewarmError as error:
            await _abort(context, error)
            raise


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without ``authorization: Bearer <token>`` (health checks excepted)."""

    def __init__(self, token: BearerToken) -> None:
        self._token = token

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
        if hmac.compare_digest(presented, self._token.expected()):
            return await continuation(handler_call_details)
        return self._deny


async def _decoded(
    decode: Callable[[bytes], Any],
    raw: bytes,
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
) -> Any:
    try:
        return decode(raw)
    except DecodeError as error:
        await _abort(
            context,
            InvalidInput(
                f"the request bytes are not a valid message for {method} ({error}); send the "
                "request type gpu_agent.proto declares"
            ),
        )
        raise  # unreachable: abort raises


class RequestDecodeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Decodes unary requests itself, so that bytes which are not the method's message type end
    as INVALID_ARGUMENT (grpc's own failed deserialisation ends as UNKNOWN, logged as an
    unexpected exception)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method: str = handler_call_details.method
        serialize = handler.response_serializer
        if not handler.response_streaming:
            unary = handler.unary_unary
            if not inspect.iscoroutinefunction(unary):
                return handler

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await unary(await _decoded(decode, raw, context, method), context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
        stream = handler.unary_stream
        if inspect.isasyncgenfunction(stream):

            async def generated(
                raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for item in stream(await _decoded(decode, raw, context, method), context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(generated, response_serializer=serialize)
        if inspect.iscoroutinefunction(stream):
            # A streaming handler that writes with context.write() (grpc's health Watch).
            async def written(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                await stream(await _decoded(decode, raw, context, method), context)

            return grpc.unary_stream_rpc_method_handler(written, response_serializer=serialize)
        return handler


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

    Checks the configuration first (:class:`InvalidInput`: no token in token mode, a tier root
    that is not the agent's own), recovers the tiers (a previous process may have been killed
    mid-load), then serves GpuAgent, health (and reflection when configured) on
    ``config.listen``; ``on_ready`` gets the bound port. On stop: health goes NOT_SERVING, then
    the server stops with ``shutdown_grace_s`` of grace.
    """
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    # Configuration errors end start-up before anything is touched (InvalidInput: exit 2).
    check_tier_roots(config.cache_dir, config.shm_dir, home=Path.home())
    config = config.model_copy(update={"listen": checked_listen(config)})
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if config.auth.mode == "token":
        interceptors.append(BearerTokenInterceptor(BearerToken.from_config(config.auth)))
    elif config.auth.mode == "none":
        # checked_listen above allowed mode=none on a loopback address only.
        log.warning(
            "gpu agent auth is off (agent.auth.mode=none): any process on this machine may "
            "preload, evict and attach; it listens on loopback only",
            extra={"listen": config.listen},
        )
    interceptors.append(RequestDecodeInterceptor())
    agent = agent if agent is not None else Agent(config)
    await asyncio.to_thread(agent.recover)
    agent.bind_loop(loop)

    server = grpc.aio.server(interceptors=interceptors)
    pb_grpc.add_GpuAgentServicer_to_server(GpuAgentService(agent), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
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
    log.info("gpu agent serving", extra=serving_fields(config, agent, port))
    mismatch = cuda_mismatch(agent)
    if mismatch is not None:
        log.warning(mismatch)
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
