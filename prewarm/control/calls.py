"""How every unary control-API handler runs: under a deadline, with errors mapped in one place.

Owns: :func:`guarded`, which bounds a handler's work by the call's deadline capped at the server's
maximum, refuses writes on a replica that is not the leader (naming the leader), and turns
:class:`common.errors.PrewarmError` into a gRPC status via :mod:`common.grpc_status`. Must not: map
errors to codes itself. Anything that is not a ``PrewarmError`` is a bug and propagates (grpc
reports it as UNKNOWN and logs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError

from common.errors import DeadlineExceeded, FailedPrecondition, InvalidInput, PrewarmError
from common.grpc_status import status_for

T = TypeVar("T")

LEADER_METADATA_KEY = "prewarm-leader"
"""Trailing metadata naming the leader's ``host:port`` on a FAILED_PRECONDITION not-leader reply."""


async def abort(context: grpc.aio.ServicerContext, error: PrewarmError) -> NoReturn:
    """End the call with the status :mod:`common.grpc_status` assigns to ``error``."""
    await context.abort(status_for(error), str(error))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def call_budget_s(context: grpc.aio.ServicerContext, max_call_s: float) -> float:
    """Seconds this call may take: the client's deadline, capped by the server's maximum."""
    remaining = context.time_remaining()
    if remaining is None:
        return max_call_s
    return max(0.0, min(float(remaining), max_call_s))


async def guarded(
    context: grpc.aio.ServicerContext,
    work: Callable[[], Awaitable[T]],
    *,
    max_call_s: float,
    write: bool = False,
    is_leader: Callable[[], bool] | None = None,
    leader_address: Callable[[], str | None] | None = None,
    on_done: Callable[[str], None] | None = None,
) -> T:
    """Run ``work`` for one call and return its result, or end the call with a mapped status.

    A write on a non-leader (``is_leader()`` false) fails with FAILED_PRECONDITION whose message
    and ``prewarm-leader`` trailing metadata name the leader, before any work is done.
    ``on_done`` receives the call's status code name (``"OK"``, ``"NOT_FOUND"``...), for metrics.
    """
    try:
        if write and is_leader is not None and not is_leader():
            leader = leader_address() if leader_address is not None else None
            if leader:
                context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
                raise FailedPrecondition(
                    f"this replica is not the leader; send write calls to the leader at {leader} "
                    f"(prewarm --server {leader})"
                )
            raise FailedPrecondition(
                "this replica is not the leader and no leader is known yet (election in "
                "progress); retry in a few seconds"
            )
        budget = call_budget_s(context, max_call_s)
        try:
            async with asyncio.timeout(budget):
                result = await work()
        except TimeoutError:
            raise DeadlineExceeded(
                f"the call did not finish within its {budget:.1f} s budget (client deadline, "
                f"capped at {max_call_s:g} s); retry, and check the daemon's Kubernetes API "
                "latency if it persists"
            ) from None
    except PrewarmError as error:
        if on_done is not None:
            on_done(status_for(error).name)
        await abort(context, error)
    if on_done is not None:
        on_done("OK")
    return result


class DecodeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Decodes requests inside the handler, so undecodable bytes get INVALID_ARGUMENT.

    grpc decodes a request before any handler runs and answers UNKNOWN when that fails, which tells
    the caller nothing. This interceptor gives unary and server-streaming handlers the raw bytes
    and decodes them itself, mapping a ``DecodeError`` to :class:`InvalidInput` like every other
    bad request.
    """

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method = str(handler_call_details.method)

        async def request_of(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return decode(raw)
            except DecodeError:
                await abort(
                    context,
                    InvalidInput(f"the request is not a valid protobuf message for {method}"),
                )

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await inner(await request_of(raw, context), context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(
                raw: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async for item in inner_stream(await request_of(raw, context), context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, response_serializer=handler.response_serializer
            )
        return handler
