"""Who may call the control API: bearer tokens or TLS client certificates, with read/write scopes.

Owns: turning a call's credentials (``authorization: Bearer <token>`` metadata, or the peer's
certificate common name) into a :class:`Principal` with a :class:`Scope`, and the gRPC server
interceptor that refuses calls whose principal lacks the scope the method needs. Reads token files
once, in :meth:`Authenticator.from_config` (at server start). Must not: log or echo a secret.

Refusals raise :class:`common.errors.PermissionDenied` (mapped to a status code by
:mod:`common.grpc_status`, like every other error): no credential, an unknown token, or a read-only
credential on a write method.
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from common.errors import InvalidInput, PermissionDenied, PrewarmError, Unauthenticated
from common.grpc_status import status_for
from prewarm.control.config import ControlConfig, Scope

ANONYMOUS = "anonymous"

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "prewarm_control_principal", default=None
)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``name`` (recorded as ``created_by``) and what it may do."""

    name: str
    scope: Scope

    def allows(self, required: Scope) -> bool:
        """A write scope allows reads too."""
        return self.scope == Scope.WRITE or required == Scope.READ


def current_principal() -> Principal | None:
    """The caller of the RPC being handled (set by :class:`AuthInterceptor`), or None."""
    return _principal.get()


@dataclass(frozen=True, slots=True)
class _Token:
    name: str
    scope: Scope
    secret: bytes


class Authenticator:
    """Turns credentials into a :class:`Principal`; build it with :meth:`from_config`."""

    def __init__(
        self,
        *,
        mode: str,
        tokens: Sequence[tuple[str, Scope, str]] = (),
        subjects: Mapping[str, Scope] | None = None,
    ) -> None:
        if mode not in ("token", "mtls", "none"):
            raise InvalidInput(f"auth mode must be token, mtls or none; got {mode!r}")
        if mode == "token" and not tokens:
            raise InvalidInput(
                "control.auth.mode is token but no tokens are configured: add "
                "control.auth.tokens (name, scope, token or file), or, for a development daemon on "
                "this machine, control.auth.mode=none (it then listens on 127.0.0.1 only)"
            )
        self.mode = mode
        self._tokens = tuple(
            _Token(name=name, scope=scope, secret=secret.encode()) for name, scope, secret in tokens
        )
        self._subjects = dict(subjects or {})

    @classmethod
    def from_config(
        cls, config: ControlConfig, *, read_text: Callable[[Path], str] = Path.read_text
    ) -> Authenticator:
        """Build from ``config``, reading token files now; :class:`InvalidInput` names a bad one."""
        tokens: list[tuple[str, Scope, str]] = []
        for entry in config.auth.tokens:
            if entry.token is not None:
                secret = entry.token.get_secret_value().strip()
            else:
                assert entry.file is not None  # the config validator guarantees one of the two
                try:
                    secret = read_text(entry.file).strip()
                except OSError as error:
                    raise InvalidInput(
                        f"cannot read token file {entry.file} of token {entry.name!r}: "
                        f"{error.strerror or error}"
                    ) from error
            if len(secret) < 16:
                raise InvalidInput(
                    f"token {entry.name!r} is shorter than 16 characters; use a random one, "
                    "e.g. `openssl rand -hex 32`"
                )
            tokens.append((entry.name, entry.scope, secret))
        subjects = {s.common_name: s.scope for s in config.tls.subjects} if config.tls else {}
        return cls(mode=config.auth.mode, tokens=tokens, subjects=subjects)

    def authenticate(
        self, metadata: Sequence[tuple[str, Any]], auth_context: Mapping[str, Sequence[bytes]]
    ) -> Principal:
        """The caller behind ``metadata`` / ``auth_context``, or :class:`PermissionDenied`."""
        if self.mode == "none":
            return Principal(ANONYMOUS, Scope.WRITE)
        if self.mode == "mtls":
            names = auth_context.get("x509_common_name") or ()
            for raw in names:
                name = raw.decode(errors="replace")
                if name in self._subjects:
                    return Principal(name, self._subjects[name])
            if not names:
                raise Unauthenticated(
                    "no client certificate: connect with a certificate signed by the control "
                    "API's client CA"
                )
            raise PermissionDenied(
                "client certificate common name is not in control.tls.subjects; "
                "ask an operator to grant it a scope"
            )
        presented = _bearer(metadata)
        if presented is None:
            raise Unauthenticated(
                "missing bearer token: set PREWARM_TOKEN or pass --token-file "
                "(gRPC metadata `authorization: Bearer <token>`)"
            )
        found: _Token | None = None
        for token in self._tokens:
            # Compare against every token in constant time, so timing reveals nothing.
            if hmac.compare_digest(token.secret, presented) and found is None:
                found = token
        if found is None:
            raise Unauthenticated("the bearer token is not recognised; check PREWARM_TOKEN")
        return Principal(found.name, found.scope)


def _bearer(metadata: Sequence[tuple[str, Any]]) -> bytes | None:
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        scheme, _, credential = text.strip().partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip().encode()
    return None


RequiredScope = Callable[[str], Scope | None]
"""Maps a full method name (``/package.Service/Method``) to the scope it needs; None = anyone."""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls whose credentials lack the scope of their method; records the principal.

    Wraps each handler (unary or server-streaming) so the check runs with the call's context (which
    carries the TLS peer); the principal is then available to the handler via
    :func:`current_principal`.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        required: RequiredScope,
        *,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._required = required
        self._on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method)
        required = self._required(method)
        if required is None:
            return handler
        return _wrap(handler, lambda context: self._check(context, method, required))

    def _check(self, context: grpc.aio.ServicerContext, method: str, required: Scope) -> Principal:
        short = method.rsplit("/", 1)[-1]
        try:
            principal = self._authenticator.authenticate(
                tuple(context.invocation_metadata() or ()), context.auth_context() or {}
            )
            if not principal.allows(required):
                raise PermissionDenied(
                    f"credential {principal.name!r} is read-only; {short} needs a write token"
                )
        except PrewarmError as error:
            if self._on_refused is not None:
                self._on_refused(short, status_for(error).name)
            raise
        return principal


async def _refuse(context: grpc.aio.ServicerContext, error: PrewarmError) -> None:
    await context.abort(status_for(error), str(error))


def _wrap(
    handler: grpc.RpcMethodHandler,
    check: Callable[[grpc.aio.ServicerContext], Principal],
) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                principal = check(context)
            except PrewarmError as error:
                await _refuse(context, error)
            _principal.set(principal)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                principal = check(context)
            except PrewarmError as error:
                await _refuse(context, error)
            _principal.set(principal)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    raise InvalidInput(
        "the control API has no client-streaming methods; refusing to serve one unauthenticated"
    )
