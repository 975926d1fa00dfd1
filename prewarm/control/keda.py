"""KEDA's external scaler (``externalscaler.ExternalScaler``) serving prewarm's forecasts.

Owns: reading a ScaledObject trigger's metadata (:func:`parse_metadata`), the pure computation of
the metric and of "active" from a forecast, the observed rate and the manual overrides
(:func:`evaluate`), and the gRPC servicer. Must not: change any state (KEDA only reads).

Metadata (all strings, as KEDA passes them): ``model`` (required), ``quantile`` (one of the
daemon's forecast levels), ``leadTime`` (a duration, ``5m``), ``targetPerReplica`` (requests/s one
replica should take), ``activationProbability``. Missing keys take ``control.keda`` defaults.

The metric (requests/s) is ``max(forecast at the quantile over [now, now + leadTime], observed,
manual floor x targetPerReplica)``; KEDA's HPA divides it by ``targetPerReplica`` (AverageValue), so
the replicas for predicted traffic are requested ``leadTime`` ahead of it. ``IsActive`` is true when
P(a request within leadTime) (the planner's :class:`planner.planner.Outlook` over the forecast)
exceeds ``activationProbability``, a manual request or pin applies, or traffic is observed, so KEDA
scales from zero before the first request.

The scaler reads only what the decision cycle published (:class:`prewarm.control.view.DaemonView`):
the forecasts, the quality gate's verdict (a gated model is served reactively: its forecast is
ignored, as the planner ignores it), and the manual requests, pins and pauses the cycle applied,
with the cycle's own lead times. A paused model (or a global pause) is served reactively too.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
import structlog

from common.durations import parse_duration_s
from common.errors import InvalidInput, NotFound, PrewarmError
from common.ids import ModelId
from forecaster.types import Forecast
from planner.planner import Outlook
from prewarm.control.calls import abort, guarded
from prewarm.control.config import KedaConfig
from prewarm.control.metrics import ControlMetrics
from prewarm.control.overrides import ActiveOverrides, check_model_id
from prewarm.control.view import DaemonView
from protos import externalscaler_pb2, externalscaler_pb2_grpc

T = TypeVar("T")
log = structlog.get_logger(__name__)

METRIC_PREFIX = "prewarm-"
_NOT_NAME = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class ScalerQuery:
    """What one ScaledObject trigger asks for, with defaults filled in."""

    model: ModelId
    quantile: float
    lead_time_s: float
    target_per_replica: float
    activation_probability: float

    @property
    def metric_name(self) -> str:
        """The external metric's name: ``prewarm-<model>`` lowercased, other characters -> ``-``."""
        slug = _NOT_NAME.sub("-", self.model.lower()).strip("-") or "model"
        return (METRIC_PREFIX + slug)[:200]


def _float(metadata: Mapping[str, str], key: str, default: float) -> float:
    raw = metadata.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"ScaledObject metadata {key}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidInput(f"ScaledObject metadata {key}={raw!r} must be finite")
    return value


def parse_metadata(metadata: Mapping[str, str], defaults: KedaConfig) -> ScalerQuery:
    """The :class:`ScalerQuery` of a trigger's metadata; :class:`InvalidInput` names a bad key."""
    model_text = metadata.get("model", "").strip()
    if not model_text:
        raise InvalidInput(
            "ScaledObject trigger metadata needs `model: <model id>` (the model label prewarm "
            "forecasts); see docs/keda.md"
        )
    model = check_model_id(model_text)
    quantile = _float(metadata, "quantile", defaults.quantile)
    if not 0 < quantile < 1:
        raise InvalidInput(f"ScaledObject metadata quantile={quantile:g} must be in (0, 1)")
    lead_raw = metadata.get("leadTime", "").strip()
    lead_time_s = parse_duration_s(lead_raw) if lead_raw else defaults.lead_time_s
    if lead_time_s > 86400:
        raise InvalidInput(f"ScaledObject metadata leadTime={lead_raw} is beyond one day")
    target = _float(metadata, "targetPerReplica", defaults.target_per_replica)
    if target <= 0:
        raise InvalidInput(f"ScaledObject metadata targetPerReplica={target:g} must be > 0")
    probability = _float(metadata, "activationProbability", defaults.activation_probability)
    if not 0 < probability <= 1:
        raise InvalidInput(
            f"ScaledObject metadata activationProbability={probability:g} must be in (0, 1]"
        )
    return ScalerQuery(
        model=model,
        quantile=quantile,
        lead_time_s=lead_time_s,
        target_per_replica=target,
        activation_probability=probability,
    )


@dataclass(frozen=True, slots=True)
class ScalerReading:
    """The metric (requests/s) and activity for one query at one moment, with why."""

    value_rps: float
    active: bool
    forecast_rps: float | None
    p_request: float | None
    observed_rps: float
    floor_rps: float


def _level(forecast: Forecast, quantile: float) -> float:
    for level in forecast.quantiles:
        if abs(level - quantile) < 1e-9:
            return level
    raise InvalidInput(
        f"quantile {quantile:g} is not forecast for {forecast.model}; use one of "
        f"{', '.join(f'{q:g}' for q in forecast.quantiles)} in the ScaledObject metadata"
    )


def evaluate(
    query: ScalerQuery,
    *,
    forecast: Forecast | None,
    observed_rps: float | None,
    overrides: ActiveOverrides,
    now_s: float,
    gated: bool = False,
) -> ScalerReading:
    """The metric and activity of ``query`` at ``now_s`` (pure). See the module docstring."""
    finite = observed_rps is not None and math.isfinite(observed_rps)
    observed = max(0.0, observed_rps) if finite and observed_rps is not None else 0.0
    if overrides.is_paused(query.model):
        return ScalerReading(
            value_rps=observed,
            active=observed > 0,
            forecast_rps=None,
            p_request=None,
            observed_rps=observed,
            floor_rps=0.0,
        )
    forecast_rps: float | None = None
    p_request: float | None = None
    if forecast is not None and not gated and forecast.horizon > 0:
        level = _level(forecast, query.quantile)
        lead = np.array([query.lead_time_s])
        p_any, _, _ = Outlook({query.model: forecast}, [query.model], level=level).over(now_s, lead)
        p_request = float(p_any[0])
        first = max(0, math.floor((now_s - forecast.start_s) / forecast.step_s))
        last = math.ceil((now_s + query.lead_time_s - forecast.start_s) / forecast.step_s)
        if first < forecast.horizon:
            counts = forecast.quantile(level)[first : min(forecast.horizon, max(last, first + 1))]
            forecast_rps = float(np.max(counts)) / forecast.step_s
    floor = overrides.floors.get(query.model)
    floor_rps = floor.min_replicas * query.target_per_replica if floor is not None else 0.0
    manual = floor is not None or query.model in overrides.tiers
    value = max(forecast_rps or 0.0, observed, floor_rps)
    active = (
        manual
        or observed > 0
        or (p_request is not None and p_request > query.activation_probability)
        or (forecast_rps is not None and forecast_rps >= query.target_per_replica)
    )
    return ScalerReading(
        value_rps=value,
        active=active,
        forecast_rps=forecast_rps,
        p_request=p_request,
        observed_rps=observed,
        floor_rps=floor_rps,
    )


Authorize = Callable[[grpc.aio.ServicerContext, Mapping[str, str]], None]
"""Checks a KEDA call's credentials: gRPC metadata, the TLS peer, or the trigger's metadata
(``tokenFromEnv``, which KEDA resolves from the scale target's environment); raises to refuse."""


class KedaScaler(externalscaler_pb2_grpc.ExternalScalerServicer):
    """The external scaler over what the daemon's cycle published (its view), the
    ``control.keda`` defaults and a clock.
    """

    def __init__(
        self,
        view: DaemonView,
        *,
        config: KedaConfig,
        clock: Callable[[], float] = time.time,
        max_call_s: float = 10.0,
        metrics: ControlMetrics | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else ControlMetrics()
        self._authorize = authorize
        self._view = view
        self._config = config
        self._clock = clock
        self._max_call_s = max_call_s
        self._closing = asyncio.Event()

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self._closing.set()

    def reopen(self) -> None:
        """Allow streams again after :meth:`close` (a server started again)."""
        self._closing = asyncio.Event()

    def _check(
        self, context: grpc.aio.ServicerContext, ref: externalscaler_pb2.ScaledObjectRef
    ) -> None:
        """Refuse the call unless its credentials (or its trigger's token) may read."""
        if self._authorize is not None:
            self._authorize(context, dict(ref.scalerMetadata))

    async def read(
        self, ref: externalscaler_pb2.ScaledObjectRef
    ) -> tuple[ScalerQuery, ScalerReading]:
        """Evaluate one ScaledObject now; :class:`NotFound` for a model the daemon does not know."""
        query = parse_metadata(dict(ref.scalerMetadata), self._config)
        forecast = self._view.forecasts().get(query.model)
        if forecast is None and query.model not in self._view.known_models():
            raise NotFound(
                f"prewarm does not know model {query.model!r} (ScaledObject "
                f"{ref.namespace}/{ref.name}); check its `model` metadata"
            )
        now_s = self._clock()
        reading = evaluate(
            query,
            forecast=forecast,
            observed_rps=self._view.observed_rps(query.model),
            overrides=self._view.overrides(),
            now_s=now_s,
            gated=query.model in self._view.gated_models(),
        )
        self._metrics.observe_keda(query.model, value_rps=reading.value_rps, active=reading.active)
        return query, reading

    async def _run(
        self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]], *, method: str
    ) -> T:
        def done(code: str) -> None:
            self._metrics.observe_call(method, code)

        return await guarded(context, work, max_call_s=self._max_call_s, on_done=done)

    async def IsActive(  # noqa: N802 - gRPC method names
        self, request: externalscaler_pb2.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> externalscaler_pb2.IsActiveResponse:
        async def work() -> externalscaler_pb2.IsActiveResponse:
            self._check(context, request)
            _, reading = await self.read(request)
            return externalscaler_pb2.IsActiveResponse(result=reading.active)

        return await self._run(context, work, method="IsActive")

    async def StreamIsActive(  # noqa: N802 - gRPC method names
        self, request: externalscaler_pb2.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[externalscaler_pb2.IsActiveResponse]:
        """Send IsActive now and whenever it changes (checked every ``stream_interval_s``) until
        the client goes away or the server stops. A bad trigger ends the stream with its status.
        """
        try:
            self._check(context, request)
        except PrewarmError as error:
            await abort(context, error)
        last: bool | None = None
        while not self._closing.is_set():
            try:
                async with asyncio.timeout(self._max_call_s):
                    _, reading = await self.read(request)
            except TimeoutError:
                reading = None  # a slow store read: keep the last answer, try again next round
            except PrewarmError as error:
                await abort(context, error)
            if reading is not None and reading.active != last:
                last = reading.active
                yield externalscaler_pb2.IsActiveResponse(result=last)
            try:
                await asyncio.wait_for(self._closing.wait(), self._config.stream_interval_s)
            except TimeoutError:
                continue

    def _spec(
        self, ref: externalscaler_pb2.ScaledObjectRef
    ) -> externalscaler_pb2.GetMetricSpecResponse:
        query = parse_metadata(dict(ref.scalerMetadata), self._config)
        target = query.target_per_replica
        return externalscaler_pb2.GetMetricSpecResponse(
            metricSpecs=[
                externalscaler_pb2.MetricSpec(
                    metricName=query.metric_name,
                    targetSize=max(1, math.ceil(target)),
                    targetSizeFloat=target,
                )
            ]
        )

    async def GetMetricSpec(  # noqa: N802 - gRPC method names
        self, request: externalscaler_pb2.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> externalscaler_pb2.GetMetricSpecResponse:
        async def work() -> externalscaler_pb2.GetMetricSpecResponse:
            self._check(context, request)
            return self._spec(request)

        return await self._run(context, work, method="GetMetricSpec")

    async def StreamMetricSpec(  # noqa: N802 - gRPC method names
        self, request: externalscaler_pb2.ScaledObjectRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[externalscaler_pb2.GetMetricSpecResponse]:
        """Send the metric spec once (KEDA's rule: at once on open), then hold the stream open
        until the client goes away or the server stops: the spec depends only on the trigger's
        metadata, which cannot change during a stream, so there is never an update to push.
        """
        try:
            self._check(context, request)
            spec = self._spec(request)
        except PrewarmError as error:
            await abort(context, error)
        yield spec
        await self._closing.wait()

    async def GetMetrics(  # noqa: N802 - gRPC method names
        self, request: externalscaler_pb2.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> externalscaler_pb2.GetMetricsResponse:
        async def work() -> externalscaler_pb2.GetMetricsResponse:
            self._check(context, request.scaledObjectRef)
            query, reading = await self.read(request.scaledObjectRef)
            return externalscaler_pb2.GetMetricsResponse(
                metricValues=[
                    externalscaler_pb2.MetricValue(
                        metricName=request.metricName or query.metric_name,
                        metricValue=math.ceil(reading.value_rps),
                        metricValueFloat=reading.value_rps,
                    )
                ]
            )

        return await self._run(context, work, method="GetMetrics")
