"""The one place where prewarm's error kinds map to gRPC status codes (servers) and back (clients).

Servers wrap their handlers with :func:`abort_with` semantics via :func:`status_for`; clients turn a
``grpc.RpcError`` back into the matching :class:`common.errors.PrewarmError` with :func:`error_for`.
"""

from __future__ import annotations

import grpc

from common import errors

_TO_STATUS: tuple[tuple[type[errors.PrewarmError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    # Before PermissionDenied: Unauthenticated is a subclass of it.
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.TemporaryError, grpc.StatusCode.UNAVAILABLE),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for ``error``; anything not a known kind is ``INTERNAL``."""
    for kind, code in _TO_STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode, message: str) -> errors.PrewarmError:
    """The :class:`PrewarmError` a client should raise for a failed call with ``code``.

    Unknown codes map to the base class.
    """
    for kind, mapped in _TO_STATUS:
        if mapped == code:
            return kind(message)
    return errors.PrewarmError(f"{code.name}: {message}")
