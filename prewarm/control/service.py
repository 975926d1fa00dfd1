"""The control gRPC service (``prewarm.control.v1.Control``) and the server that hosts it.

Owns: translating protobuf requests into validated overrides (:mod:`prewarm.control.overrides`),
storing them (:class:`prewarm.control.store.ControlStore`), and answering reads from the daemon's
:class:`prewarm.control.view.DaemonView`; and :class:`ControlServer`, which serves this service, the
KEDA external scaler, gRPC health and reflection on one port, with auth. Must not: plan, act, or map
errors to status codes itself (:mod:`prewarm.control.calls` and :mod:`common.grpc_status` do).

Every write is refused on a non-leader replica (FAILED_PRECONDITION naming the leader); a refused
write stores nothing (validation happens before the store's atomic update, and the update itself
raises before writing).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PrewarmError,
    TemporaryError,
    Unauthenticated,
)
from common.ids import ModelId, RequestId
from forecaster.types import Forecast
from planner.actions import (
    Action,
    Evict,
    ImagePrepull,
    NodeCapacity,
    Preload,
    ReplicaFloor,
    Tier,
)
from prewarm.control.auth import Authenticator, AuthInterceptor, current_principal
from prewarm.control.calls import DecodeInterceptor, guarded
from prewarm.control.config import ControlConfig, Scope
from prewarm.control.keda import Authorize, KedaScaler
from prewarm.control.metrics import ControlMetrics
from prewarm.control.overrides import (
    ControlState,
    Limits,
    ManualRequest,
    Pause,
    Pin,
    active_overrides,
    add_request,
    cancel_request,
    check_model_id,
    check_request_id,
    pause,
    pin_model,
    resume,
    unpin_model,
    validate_request,
)
from prewarm.control.store import ControlStore
from prewarm.control.view import DaemonView
from protos import control_pb2, control_pb2_grpc, externalscaler_pb2, externalscaler_pb2_grpc
from protos.tiers import control_tier, tier_from_proto

log = structlog.get_logger(__name__)

T = TypeVar("T")

CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["Control"].full_name
KEDA_SERVICE = externalscaler_pb2.DESCRIPTOR.services_by_name["ExternalScaler"].full_name
WRITE_METHODS = frozenset({"Warm", "Cancel", "Pin", "Unpin", "Pause", "Resume"})
MAX_REASON_CHARS = 500


def new_request_id() -> RequestId:
    """A fresh random request id, ``req-`` + 16 hex digits."""
    return RequestId(f"req-{secrets.token_hex(8)}")


def limits_of(config: ControlConfig) -> Limits:
    """The caps of ``config`` as :class:`Limits`."""
    return Limits(
        max_replicas_per_request=config.max_replicas_per_request,
        max_duration_s=config.max_duration_s,
        max_start_ahead_s=config.max_start_ahead_s,
        start_grace_s=config.start_grace_s,
        max_active_requests=config.max_active_requests,
        max_gpu_bytes_per_request=config.max_gpu_bytes_per_request,
    )


def _finite_duration(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{what} must be a finite number of seconds >= 0, got {value}")
    return value


def request_to_proto(request: ManualRequest, *, now_s: float) -> control_pb2.ManualRequest:
    """``request`` as its protobuf message, with ``state`` as of ``now_s``."""
    message = control_pb2.ManualRequest(
        id=request.id,
        model=request.model,
        tier=control_tier(request.tier),
        start_s=request.start_s,
        end_s=request.end_s,
        created_s=request.created_s,
        created_by=request.created_by,
        reason=request.reason,
        state="active" if request.is_active(now_s) else "pending",
    )
    if request.replicas is not None:
        message.replicas = request.replicas
    return message


def pin_to_proto(pin: Pin) -> control_pb2.Pin:
    """``pin`` as its protobuf message (``until_s`` 0 = until unpinned)."""
    return control_pb2.Pin(
        model=pin.model,
        tier=control_tier(pin.tier),
        created_s=pin.created_s,
        created_by=pin.created_by,
        until_s=pin.until_s or 0.0,
    )


def pause_to_proto(entry: Pause) -> control_pb2.Pause:
    """``entry`` as its protobuf message (``until_s`` 0 = until resumed)."""
    return control_pb2.Pause(
        model=entry.model or "",
        all_models=entry.model is None,
        created_s=entry.created_s,
        created_by=entry.created_by,
        until_s=entry.until_s or 0.0,
    )


def action_to_proto(action: Action) -> control_pb2.PlanAction:
    """One planner action, flattened into a ``PlanAction``."""
    if isinstance(action, ReplicaFloor):
        workload = action.workload
        return control_pb2.PlanAction(
            kind="replica_floor",
            model=action.model,
            min_replicas=action.min_replicas,
            until_s=action.until_s,
            workload=f"{workload.kind}/{workload.namespace}/{workload.name}",
            reason=action.reason,
            value=action.value,
        )
    if isinstance(action, Preload):
        return control_pb2.PlanAction(
            kind="preload",
            model=action.model,
            node=action.node,
            tier=control_tier(action.tier),
            bytes=action.bytes,
            deadline_s=action.deadline_s,
            value_per_byte=action.value_per_byte,
            reason=action.reason,
            value=action.value,
        )
    if isinstance(action, Evict):
        return control_pb2.PlanAction(
            kind="evict",
            model=action.model,
            node=action.node,
            tier=control_tier(action.tier),
            reason=action.reason,
            value=action.value,
        )
    if isinstance(action, NodeCapacity):
        return control_pb2.PlanAction(
            kind="node_capacity",
            pool=action.pool,
            gpus=action.gpus,
            reason=action.reason,
            value=action.value,
        )
    if isinstance(action, ImagePrepull):
        return control_pb2.PlanAction(
            kind="image_prepull",
            pool=action.pool,
            image=action.image,
            deadline_s=action.deadline_s,
            reason=action.reason,
            value=action.value,
        )
    raise TypeError(f"unknown plan action {type(action).__name__}")  # pragma: no cover


def forecast_to_proto(
    forecast: Forecast, *, quantiles: tuple[float, ...], horizon_s: float
) -> control_pb2.GetForecastResponse:
    """``forecast`` cut to ``horizon_s`` (0 = all of it) at ``quantiles`` (empty = all levels)."""
    levels: list[float] = []
    for wanted in quantiles:
        match = [q for q in forecast.quantiles if abs(q - wanted) < 1e-9]
        if not match:
            raise InvalidInput(
                f"quantile {wanted:g} is not forecast for {forecast.model}; "
                f"available: {', '.join(f'{q:g}' for q in forecast.quantiles)}"
            )
        levels.append(match[0])
    if not quantiles:
        levels = list(forecast.quantiles)
    steps = forecast.horizon
    if horizon_s > 0:
        steps = min(forecast.horizon, max(1, math.ceil(horizon_s / forecast.step_s)))
    return control_pb2.GetForecastResponse(
        model=forecast.model,
        start_s=forecast.start_s,
        step_s=forecast.step_s,
        method=forecast.method,
        stale=forecast.stale,
        mean=[float(v) for v in forecast.mean[:steps]],
        quantiles=[
            control_pb2.QuantileSeries(
                level=level, values=[float(v) for v in forecast.quantile(level)[:steps]]
            )
            for level in levels
        ],
        p_active=[float(v) for v in forecast.p_active[:steps]],
        notes=list(forecast.notes),
    )


def _action_model(action: Action) -> ModelId | None:
    return getattr(action, "model", None)


class ControlService(control_pb2_grpc.ControlServicer):
    """``prewarm.control.v1.Control`` over a store, the daemon's view, config and a clock.

    ``model_bytes`` gives a model's weight bytes (from the catalog) for the GPU budget cap; None
    skips that cap. ``new_id`` makes request ids (tests pass a deterministic one).
    """

    def __init__(
        self,
        store: ControlStore,
        view: DaemonView,
        *,
        config: ControlConfig,
        clock: Callable[[], float] = time.time,
        model_bytes: Callable[[ModelId], int | None] | None = None,
        new_id: Callable[[], RequestId] = new_request_id,
        metrics: ControlMetrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else ControlMetrics()
        self._store = store
        self._view = view
        self._config = config
        self._limits = limits_of(config)
        self._clock = clock
        self._model_bytes = model_bytes
        self._new_id = new_id

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(
        self,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[T]],
        *,
        method: str,
        write: bool = False,
    ) -> T:
        def done(code: str) -> None:
            self._metrics.observe_call(method, code)

        result = await guarded(
            context,
            work,
            max_call_s=self._config.max_call_s,
            write=write,
            is_leader=self._view.is_leader,
            leader_address=self._view.leader_address,
            on_done=done,
        )
        if write:
            # Keep the override gauges current after every write (the daemon also sets them
            # each tick, which catches other replicas' writes and expiry).
            with contextlib.suppress(PrewarmError):  # the write stands; gauges catch up next tick
                self._metrics.observe_state(await self._store.load(max_age_s=5.0), self._clock())
        return result

    def _known(self) -> frozenset[ModelId] | None:
        # Before the daemon has loaded any model (first tick), nothing can be checked; accept.
        known = self._view.known_models()
        return known or None

    @staticmethod
    def _who() -> str:
        principal = current_principal()
        return principal.name if principal is not None else ""

    # -- writes --------------------------------------------------------------------------------

    async def Warm(  # noqa: N802 - gRPC method names
        self, request: control_pb2.WarmRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.WarmResponse:
        async def work() -> control_pb2.WarmResponse:
            now_s = self._clock()
            model = check_model_id(request.model)
            if len(request.reason) > MAX_REASON_CHARS:
                raise InvalidInput(f"reason is longer than {MAX_REASON_CHARS} characters")
            duration_s = _finite_duration(request.duration_s, "duration_s")
            start_s = now_s if request.start_s == 0 else request.start_s
            if math.isfinite(start_s) and now_s - self._limits.start_grace_s <= start_s < now_s:
                start_s = now_s  # within clock-skew grace: counts as now
            manual = ManualRequest(
                id=self._new_id(),
                model=model,
                replicas=request.replicas if request.HasField("replicas") else None,
                tier=tier_from_proto(request.tier),
                start_s=start_s,
                end_s=start_s + duration_s,
                created_s=now_s,
                created_by=self._who(),
                reason=request.reason,
            )
            validate_request(
                manual,
                limits=self._limits,
                now_s=now_s,
                known_models=self._known(),
                model_bytes=self._model_bytes,
            )

            def change(state: ControlState) -> tuple[ControlState, ManualRequest]:
                return add_request(state, manual, limits=self._limits, now_s=now_s), manual

            stored = await self._store.update(change)
            log.info(
                "manual warm request stored",
                request_id=stored.id,
                model=stored.model,
                replicas=stored.replicas,
                tier=stored.tier.name if stored.tier else None,
                start_s=stored.start_s,
                end_s=stored.end_s,
                created_by=stored.created_by,
            )
            return control_pb2.WarmResponse(request=request_to_proto(stored, now_s=now_s))

        return await self._run(context, work, method="Warm", write=True)

    async def Cancel(  # noqa: N802 - gRPC method names
        self, request: control_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.CancelResponse:
        async def work() -> control_pb2.CancelResponse:
            request_id = check_request_id(request.id)
            now_s = self._clock()
            cancelled = await self._store.update(
                lambda state: cancel_request(state, request_id, now_s=now_s)
            )
            log.info("manual warm request cancelled", request_id=request_id, by=self._who())
            return control_pb2.CancelResponse(request=request_to_proto(cancelled, now_s=now_s))

        return await self._run(context, work, method="Cancel", write=True)

    async def Pin(  # noqa: N802 - gRPC method names
        self, request: control_pb2.PinRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.PinResponse:
        async def work() -> control_pb2.PinResponse:
            now_s = self._clock()
            model = check_model_id(request.model)
            duration_s = _finite_duration(request.duration_s, "duration_s")
            entry = Pin(
                model=model,
                tier=tier_from_proto(request.tier) or Tier.GPU,
                created_s=now_s,
                created_by=self._who(),
                until_s=now_s + duration_s if duration_s > 0 else None,
            )
            known = self._known()

            def change(state: ControlState) -> tuple[ControlState, Pin]:
                new = pin_model(state, entry, limits=self._limits, now_s=now_s, known_models=known)
                return new, entry

            stored = await self._store.update(change)
            log.info("model pinned", model=model, tier=stored.tier.name, by=stored.created_by)
            return control_pb2.PinResponse(pin=pin_to_proto(stored))

        return await self._run(context, work, method="Pin", write=True)

    async def Unpin(  # noqa: N802 - gRPC method names
        self, request: control_pb2.UnpinRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.UnpinResponse:
        async def work() -> control_pb2.UnpinResponse:
            model = check_model_id(request.model)
            now_s = self._clock()
            removed = await self._store.update(lambda s: unpin_model(s, model, now_s=now_s))
            log.info("model unpinned", model=model, by=self._who())
            return control_pb2.UnpinResponse(pin=pin_to_proto(removed))

        return await self._run(context, work, method="Unpin", write=True)

    @staticmethod
    def _scope(message: control_pb2.PauseRequest | control_pb2.ResumeRequest) -> ModelId | None:
        which = message.WhichOneof("scope")
        if which == "model":
            return check_model_id(message.model)
        if which == "all_models" and message.all_models:
            return None
        raise InvalidInput("say what to pause or resume: a model, or all_models=true (--all)")

    async def Pause(  # noqa: N802 - gRPC method names
        self, request: control_pb2.PauseRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.PauseResponse:
        async def work() -> control_pb2.PauseResponse:
            now_s = self._clock()
            model = self._scope(request)
            duration_s = _finite_duration(request.duration_s, "duration_s")
            entry = Pause(
                model=model,
                created_s=now_s,
                created_by=self._who(),
                until_s=now_s + duration_s if duration_s > 0 else None,
            )
            known = self._known()

            def change(state: ControlState) -> tuple[ControlState, Pause]:
                new = pause(state, entry, limits=self._limits, now_s=now_s, known_models=known)
                return new, entry

            stored = await self._store.update(change)
            log.warning("prewarm paused", model=model or "*", by=stored.created_by)
            return control_pb2.PauseResponse(pause=pause_to_proto(stored))

        return await self._run(context, work, method="Pause", write=True)

    async def Resume(  # noqa: N802 - gRPC method names
        self, request: control_pb2.ResumeRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ResumeResponse:
        async def work() -> control_pb2.ResumeResponse:
            model = self._scope(request)
            now_s = self._clock()
            removed = await self._store.update(lambda s: resume(s, model, now_s=now_s))
            log.info("prewarm resumed", model=model or "*", by=self._who())
            return control_pb2.ResumeResponse(pause=pause_to_proto(removed))

        return await self._run(context, work, method="Resume", write=True)

    # -- reads ---------------------------------------------------------------------------------

    async def ListRequests(  # noqa: N802 - gRPC method names
        self, request: control_pb2.ListRequestsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListRequestsResponse:
        async def work() -> control_pb2.ListRequestsResponse:
            model = check_model_id(request.model) if request.model else None
            state = await self._store.load()
            now_s = self._clock()
            return control_pb2.ListRequestsResponse(
                requests=[
                    request_to_proto(r, now_s=now_s)
                    for r in state.requests
                    if model is None or r.model == model
                ],
                pins=[pin_to_proto(p) for p in state.pins if model is None or p.model == model],
                pauses=[
                    pause_to_proto(p)
                    for p in state.pauses
                    if model is None or p.model in (None, model)
                ],
                now_s=now_s,
            )

        return await self._run(context, work, method="ListRequests")

    async def GetForecast(  # noqa: N802 - gRPC method names
        self, request: control_pb2.GetForecastRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.GetForecastResponse:
        async def work() -> control_pb2.GetForecastResponse:
            model = check_model_id(request.model)
            horizon_s = _finite_duration(request.horizon_s, "horizon_s")
            quantiles = tuple(request.quantiles)
            if not all(math.isfinite(q) and 0 < q < 1 for q in quantiles):
                raise InvalidInput(f"quantiles must be in (0, 1), got {list(quantiles)}")
            forecast = self._view.forecasts().get(model)
            if forecast is None:
                if model in self._view.known_models():
                    raise FailedPrecondition(
                        f"no forecast for {model} yet; the daemon forecasts every tick, "
                        "retry after the next one"
                    )
                raise NotFound(f"unknown model {model!r}; check the name against `prewarm plan`")
            return forecast_to_proto(forecast, quantiles=quantiles, horizon_s=horizon_s)

        return await self._run(context, work, method="GetForecast")

    async def GetPlan(  # noqa: N802 - gRPC method names
        self, request: control_pb2.GetPlanRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.GetPlanResponse:
        async def work() -> control_pb2.GetPlanResponse:
            model = check_model_id(request.model) if request.model else None
            plan = self._view.plan()
            if plan is None:
                return control_pb2.GetPlanResponse(available=False, now_s=self._clock())
            return control_pb2.GetPlanResponse(
                available=True,
                now_s=plan.now_s,
                actions=[
                    action_to_proto(a)
                    for a in plan.actions
                    if model is None or _action_model(a) == model
                ],
            )

        return await self._run(context, work, method="GetPlan")

    async def Explain(  # noqa: N802 - gRPC method names
        self, request: control_pb2.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ExplainResponse:
        async def work() -> control_pb2.ExplainResponse:
            model = check_model_id(request.model)
            explanation = self._view.explain(model)
            now_s = self._clock()
            try:
                overrides = active_overrides(await self._store.load(), now_s).describe(model)
            except TemporaryError as error:
                overrides = (f"manual overrides unknown right now: {error}",)
            return control_pb2.ExplainResponse(
                model=explanation.model,
                forecast_summary=explanation.forecast_summary,
                forecast_method=explanation.forecast_method,
                p_request_within_horizon=explanation.p_request_within_horizon,
                value=explanation.value,
                lead_times=[
                    control_pb2.LeadTime(
                        stage=stage,
                        seconds=seconds,
                        observations=explanation.lead_observations.get(stage, 0),
                    )
                    for stage, seconds in explanation.lead_times_s.items()
                ],
                constraints=list(explanation.constraints),
                actions=list(explanation.actions),
                overrides=list(overrides),
                summary=explanation.summary,
            )

        return await self._run(context, work, method="Explain")


def _required_scope(method: str) -> Scope | None:
    """Scope per full method name: health and reflection are open; the KEDA scaler checks its
    callers itself (:func:`keda_authorizer`: KEDA can send its token in the trigger's metadata,
    which an interceptor does not see); control reads read; writes write."""
    service, _, name = method.lstrip("/").partition("/")
    if service in (health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1"):
        return None
    if service == KEDA_SERVICE:
        return None
    if service == CONTROL_SERVICE and name not in WRITE_METHODS:
        return Scope.READ
    return Scope.WRITE


def keda_authorizer(authenticator: Authenticator, *, anonymous: bool) -> Authorize:
    """Who may call the KEDA scaler: anyone when ``anonymous`` (an explicit setting); else a
    credential with the read scope, as gRPC metadata or a TLS client certificate (KEDA's
    TriggerAuthentication ``caCert`` / ``tlsClientCert`` / ``tlsClientKey``), or a bearer token in
    the trigger's metadata under ``tokenFromEnv`` (KEDA resolves it from an environment variable of
    the scale target, e.g. one set from a Secret) or ``token``."""

    def authorize(context: grpc.aio.ServicerContext, metadata: Mapping[str, str]) -> None:
        if anonymous:
            return
        try:
            principal = authenticator.authenticate(
                tuple(context.invocation_metadata() or ()), context.auth_context() or {}
            )
        except Unauthenticated:
            token = metadata.get("tokenFromEnv") or metadata.get("token")
            if not token:
                raise Unauthenticated(
                    "the KEDA scaler needs a read credential: add `tokenFromEnv: <variable of "
                    "the scale target holding a read token>` to the trigger's metadata, or use "
                    "TLS client certificates through a TriggerAuthentication (docs/keda.md)"
                ) from None
            try:
                principal = authenticator.authenticate((("authorization", f"Bearer {token}"),), {})
            except Unauthenticated:
                raise Unauthenticated(
                    "the token in the trigger's tokenFromEnv is not one of control.auth.tokens"
                ) from None
        if not principal.allows(Scope.READ):
            raise PermissionDenied(f"credential {principal.name!r} may not read forecasts")

    return authorize


class ControlServer:
    """One gRPC server: the control service, the KEDA scaler, health and reflection, with auth.

    Lifecycle: :meth:`start` binds and serves (returns the bound port); :meth:`stop` marks health
    NOT_SERVING, ends KEDA streams, and stops with a grace period. ``authenticator`` defaults to
    :meth:`Authenticator.from_config` (reads token files).
    """

    def __init__(
        self,
        *,
        config: ControlConfig,
        store: ControlStore,
        view: DaemonView,
        clock: Callable[[], float] = time.time,
        model_bytes: Callable[[ModelId], int | None] | None = None,
        authenticator: Authenticator | None = None,
        new_id: Callable[[], RequestId] = new_request_id,
        metrics: ControlMetrics | None = None,
    ) -> None:
        self._config = config
        self.metrics = metrics if metrics is not None else ControlMetrics()
        self.service = ControlService(
            store,
            view,
            config=config,
            clock=clock,
            model_bytes=model_bytes,
            new_id=new_id,
            metrics=self.metrics,
        )
        self._authenticator = authenticator or Authenticator.from_config(config)
        self.keda = KedaScaler(
            view,
            config=config.keda,
            clock=clock,
            max_call_s=config.max_call_s,
            metrics=self.metrics,
            authorize=keda_authorizer(self._authenticator, anonymous=config.auth.keda_anonymous),
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Bind ``config.listen_address`` and serve; return the bound port."""
        if self._server is not None:
            raise FailedPrecondition("the control server is already started")
        interceptor = AuthInterceptor(
            self._authenticator,
            _required_scope,
            on_refused=self.metrics.observe_call,
        )
        # Outermost first: check credentials, then decode the request (INVALID_ARGUMENT if bad).
        # grpc enables SO_REUSEPORT by default, so a second daemon on the same port would bind
        # silently and share the traffic; turn it off so a port in use is an error.
        server = grpc.aio.server(
            interceptors=(interceptor, DecodeInterceptor()), options=(("grpc.so_reuseport", 0),)
        )
        control_pb2_grpc.add_ControlServicer_to_server(self.service, server)
        # Fresh health and stream state, so a stopped server can be started again.
        self.health = health.aio.HealthServicer()
        self.keda.reopen()
        names = [CONTROL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self._config.keda.enabled:
            externalscaler_pb2_grpc.add_ExternalScalerServicer_to_server(self.keda, server)
            names.append(KEDA_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(names, server)
        address = self._config.listen_address
        try:
            port = self._bind(server, address)
        except RuntimeError as error:  # grpc's "Failed to bind to address ..."
            port = 0
            log.error("control API bind failed", address=address, error=str(error))
        if port == 0:
            raise InvalidInput(
                f"cannot bind the control API to {address}: the port is in use or the host is "
                "not a local address; choose another control.listen_address"
            )
        await server.start()
        for name in ("", *names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self.port = port
        log.info("control API serving", address=address, port=port, auth=self._authenticator.mode)
        if self._authenticator.mode == "none":
            # ControlConfig allows mode=none on a loopback address only.
            log.warning(
                "control API auth is off (control.auth.mode=none): any process on this machine "
                "may read and write; it listens on loopback only",
                address=address,
            )
        return port

    def _bind(self, server: grpc.aio.Server, address: str) -> int:
        tls = self._config.tls
        if tls is None:
            return int(server.add_insecure_port(address))
        try:
            key = tls.key_file.read_bytes()
            cert = tls.cert_file.read_bytes()
            ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
        except OSError as error:
            raise InvalidInput(f"cannot read a control.tls file: {error}") from error
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        return int(server.add_secure_port(address, credentials))

    async def stop(self, grace_s: float) -> None:
        """Go NOT_SERVING, end KEDA streams, and stop within ``grace_s``. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        await self.health.enter_graceful_shutdown()
        self.keda.close()
        await server.stop(grace_s)
        log.info("control API stopped")

    async def wait_for_termination(self) -> None:
        """Block until the server stops (for a standalone server)."""
        if self._server is not None:
            await self._server.wait_for_termination()
