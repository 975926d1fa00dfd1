"""gRPC calls as the tests make them: bearer-token metadata, and calls that must be refused.

A refused call is read through the public ``grpc.RpcError`` interface only (code, details,
trailing metadata), the way a client sees it. Must not: retry, or accept a call that succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """Call metadata that authenticates with ``token`` (``authorization: Bearer <token>``)."""
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Refusal:
    """What a client learns from a refused call."""

    code: grpc.StatusCode
    details: str
    trailing: dict[str, str]


def refusal_of(error: grpc.RpcError) -> Refusal:
    """The :class:`Refusal` a caught ``grpc.RpcError`` carries (a call's error is also a Call)."""
    assert isinstance(error, grpc.Call), error
    trailing = {key: str(value) for key, value in error.trailing_metadata() or ()}
    return Refusal(error.code(), error.details() or "", trailing)


def refused(
    call: Callable[..., object],
    request: object,
    *,
    metadata: Metadata = (),
    timeout: float | None = 5,
) -> Refusal:
    """Make ``call(request)``, which must fail with a ``grpc.RpcError``; what the client saw.
    ``timeout=None`` sends no deadline (the server's own cap then applies)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=timeout)
    return refusal_of(caught.value)
