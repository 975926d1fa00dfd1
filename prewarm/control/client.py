"""A small synchronous client of the control API, for the CLI and scripts.

Owns: the channel (plain or TLS), the bearer token, per-call deadlines, turning a failed call into
the matching :class:`common.errors.PrewarmError` (via :func:`common.grpc_status.error_for`), and
following a not-leader refusal to the leader once. Must not: print (the CLI does) or retry anything
but the leader redirect.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from common.errors import InvalidInput, PrewarmError
from common.grpc_status import error_for
from common.ids import ModelId
from common.tiers import Tier
from forecaster.types import Forecast
from prewarm.control.calls import LEADER_METADATA_KEY
from prewarm.control.config import DEFAULT_PORT
from protos import control_pb2, control_pb2_grpc
from protos.tiers import control_tier

T = TypeVar("T")

TOKEN_ENV = "PREWARM_TOKEN"
"""Environment variable holding the bearer token."""

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
"""Where the CLI looks for the control API by default: the port of `control.listen_address`."""


def read_token(token_file: Path | None, *, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file`` if given, else from ``PREWARM_TOKEN``, else None."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise InvalidInput(
                f"cannot read token file {token_file}: {error.strerror or error}"
            ) from error
        if not token:
            raise InvalidInput(f"token file {token_file} is empty")
        return token
    value = (environ if environ is not None else dict(os.environ)).get(TOKEN_ENV, "").strip()
    return value or None


def _leader_of(error: grpc.RpcError) -> str | None:
    trailing = getattr(error, "trailing_metadata", None)
    if trailing is None:
        return None
    for key, value in trailing() or ():
        if key == LEADER_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class ControlClient:
    """Calls the control API at ``server`` (``host:port``) with an optional bearer ``token``.

    ``tls_ca_file`` switches to TLS (with ``tls_cert_file``/``tls_key_file`` for mTLS). Each call
    has a deadline of ``timeout_s``. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        tls_ca_file: Path | None = None,
        tls_cert_file: Path | None = None,
        tls_key_file: Path | None = None,
        follow_leader: bool = True,
    ) -> None:
        if timeout_s <= 0:
            raise InvalidInput(f"timeout must be > 0 seconds, got {timeout_s}")
        self.server = server
        self._token = token
        self._timeout_s = timeout_s
        self._tls = (tls_ca_file, tls_cert_file, tls_key_file)
        self._follow_leader = follow_leader
        self._channel = self._open(server)
        self._stub = control_pb2_grpc.ControlStub(self._channel)

    def _open(self, server: str) -> grpc.Channel:
        ca, cert, key = self._tls
        if ca is None:
            return grpc.insecure_channel(server)
        try:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes(),
                private_key=key.read_bytes() if key else None,
                certificate_chain=cert.read_bytes() if cert else None,
            )
        except OSError as error:
            raise InvalidInput(f"cannot read a TLS file: {error}") from error
        return grpc.secure_channel(server, credentials)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def _call(
        self,
        method: Callable[[control_pb2_grpc.ControlStub], Callable[..., T]],
        request: Any,
        *,
        write: bool = False,
    ) -> T:
        try:
            return method(self._stub)(request, timeout=self._timeout_s, metadata=self._metadata())
        except grpc.RpcError as error:
            leader = _leader_of(error) if write and self._follow_leader else None
            if leader and leader != self.server:
                with ControlClient(
                    leader,
                    token=self._token,
                    timeout_s=self._timeout_s,
                    tls_ca_file=self._tls[0],
                    tls_cert_file=self._tls[1],
                    tls_key_file=self._tls[2],
                    follow_leader=False,
                ) as redirected:
                    return redirected._call(method, request, write=write)
            raise self._error(error) from None

    def _error(self, error: grpc.RpcError) -> PrewarmError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"cannot reach the control API at {self.server}: {details}"
        return error_for(code, details or code.name)

    # -- writes --------------------------------------------------------------------------------

    def warm(
        self,
        model: str,
        *,
        replicas: int | None = None,
        tier: Tier | None = None,
        start_s: float = 0.0,
        duration_s: float,
        reason: str = "",
    ) -> control_pb2.ManualRequest:
        """Store a warm request; returns it (with its id)."""
        request = control_pb2.WarmRequest(
            model=model,
            tier=control_tier(tier),
            start_s=start_s,
            duration_s=duration_s,
            reason=reason,
        )
        if replicas is not None:
            request.replicas = replicas
        response: control_pb2.WarmResponse = self._call(lambda s: s.Warm, request, write=True)
        return response.request

    def cancel(self, request_id: str) -> control_pb2.ManualRequest:
        """Withdraw a request; returns what was cancelled."""
        response: control_pb2.CancelResponse = self._call(
            lambda s: s.Cancel, control_pb2.CancelRequest(id=request_id), write=True
        )
        return response.request

    def pin(
        self,
        model: str,
        *,
        tier: Tier = Tier.GPU,
        duration_s: float = 0.0,
    ) -> control_pb2.Pin:
        """Pin ``model`` in ``tier`` (for ``duration_s``; 0 = until unpinned)."""
        request = control_pb2.PinRequest(
            model=model, tier=control_tier(tier), duration_s=duration_s
        )
        response: control_pb2.PinResponse = self._call(lambda s: s.Pin, request, write=True)
        return response.pin

    def unpin(self, model: str) -> control_pb2.Pin:
        """Remove the pin of ``model``; returns it."""
        response: control_pb2.UnpinResponse = self._call(
            lambda s: s.Unpin, control_pb2.UnpinRequest(model=model), write=True
        )
        return response.pin

    def pause(self, model: str | None, *, duration_s: float = 0.0) -> control_pb2.Pause:
        """Pause ``model`` (None: every model) for ``duration_s`` (0 = until resumed)."""
        if model is None:
            request = control_pb2.PauseRequest(all_models=True, duration_s=duration_s)
        else:
            request = control_pb2.PauseRequest(model=model, duration_s=duration_s)
        response: control_pb2.PauseResponse = self._call(lambda s: s.Pause, request, write=True)
        return response.pause

    def resume(self, model: str | None) -> control_pb2.Pause:
        """Resume ``model`` (None: lift the global pause); returns the pause removed."""
        if model is None:
            request = control_pb2.ResumeRequest(all_models=True)
        else:
            request = control_pb2.ResumeRequest(model=model)
        response: control_pb2.ResumeResponse = self._call(lambda s: s.Resume, request, write=True)
        return response.pause

    # -- reads ---------------------------------------------------------------------------------

    def list_requests(self, model: str = "") -> control_pb2.ListRequestsResponse:
        """Stored requests, pins and pauses (of ``model`` only, if given)."""
        response: control_pb2.ListRequestsResponse = self._call(
            lambda s: s.ListRequests, control_pb2.ListRequestsRequest(model=model)
        )
        return response

    def get_forecast(
        self, model: str, *, quantiles: Sequence[float] = (), horizon_s: float = 0.0
    ) -> control_pb2.GetForecastResponse:
        """The daemon's forecast of ``model``."""
        request = control_pb2.GetForecastRequest(
            model=model, quantiles=list(quantiles), horizon_s=horizon_s
        )
        response: control_pb2.GetForecastResponse = self._call(lambda s: s.GetForecast, request)
        return response

    def get_plan(self, model: str = "") -> control_pb2.GetPlanResponse:
        """The latest plan (only ``model``'s actions, if given)."""
        response: control_pb2.GetPlanResponse = self._call(
            lambda s: s.GetPlan, control_pb2.GetPlanRequest(model=model)
        )
        return response

    def explain(self, model: str) -> control_pb2.ExplainResponse:
        """Why the plan holds what it holds for ``model``."""
        response: control_pb2.ExplainResponse = self._call(
            lambda s: s.Explain, control_pb2.ExplainRequest(model=model)
        )
        return response


def forecast_from_proto(message: control_pb2.GetForecastResponse) -> Forecast:
    """The :class:`Forecast` carried by a ``GetForecastResponse``."""
    steps = len(message.mean)
    quantiles = tuple(series.level for series in message.quantiles)
    values = (
        np.array([list(series.values) for series in message.quantiles], dtype=np.float64)
        if quantiles
        else np.zeros((0, steps), dtype=np.float64)
    )
    return Forecast(
        model=ModelId(message.model),
        start_s=message.start_s,
        step_s=message.step_s,
        mean=np.array(message.mean, dtype=np.float64),
        quantiles=quantiles,
        values=values,
        p_active=np.array(message.p_active, dtype=np.float64),
        method=message.method,
        stale=message.stale,
        notes=tuple(message.notes),
    )


def fetch_forecast(
    server: str,
    model: str,
    *,
    token: str | None = None,
    quantiles: Sequence[float] = (),
    horizon_s: float = 0.0,
    timeout_s: float = 10.0,
    tls_ca_file: Path | None = None,
) -> Forecast:
    """The daemon's current :class:`Forecast` of ``model`` from the control API at ``server``.

    For ``prewarm forecast --server``. ``token`` None reads ``PREWARM_TOKEN``. Raises the
    :class:`PrewarmError` kind of a failed call (NotFound for an unknown model, ...).
    """
    if token is None:
        token = read_token(None)
    with ControlClient(server, token=token, timeout_s=timeout_s, tls_ca_file=tls_ca_file) as client:
        message = client.get_forecast(model, quantiles=quantiles, horizon_s=horizon_s)
    return forecast_from_proto(message)
