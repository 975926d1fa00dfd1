"""The KEDA external scaler: the pure reading, and the gRPC contract with a client generated from
KEDA's externalscaler.proto (package ``externalscaler``), as KEDA calls it (a read token in the
trigger's ``tokenFromEnv`` metadata, resolved by KEDA from the scale target's environment).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from planner.actions import Tier
from prewarm.control.config import KedaConfig
from prewarm.control.keda import ScalerQuery, evaluate, parse_metadata
from prewarm.control.overrides import (
    ActiveOverrides,
    FloorOverride,
    TierOverride,
    active_overrides,
)
from protos import control_pb2, control_pb2_grpc, externalscaler_pb2, externalscaler_pb2_grpc
from tests.control.conftest import (
    READ_TOKEN,
    WRITE_TOKEN,
    Clock,
    RunningServer,
    control_config,
    make_forecast,
    start_server,
    stop_server,
)

LLAMA = ModelId("llama-70b")
NOW = 1_800_000_000.0


def query(**fields: object) -> ScalerQuery:
    base: dict[str, object] = {
        "model": LLAMA,
        "quantile": 0.9,
        "lead_time_s": 120.0,
        "target_per_replica": 0.05,
        "activation_probability": 0.5,
    }
    base.update(fields)
    return ScalerQuery(**base)  # type: ignore[arg-type]


def test_parse_metadata_defaults_and_overrides() -> None:
    defaults = KedaConfig()
    parsed = parse_metadata({"model": "llama-70b"}, defaults)
    assert (parsed.quantile, parsed.lead_time_s, parsed.target_per_replica) == (0.9, 300.0, 1.0)
    parsed = parse_metadata(
        {
            "model": "llama-70b",
            "quantile": "0.5",
            "leadTime": "10m",
            "targetPerReplica": "2.5",
            "activationProbability": "0.2",
            "scalerAddress": "prewarm.prewarm:9090",
        },
        defaults,
    )
    assert parsed == ScalerQuery(LLAMA, 0.5, 600.0, 2.5, 0.2)
    assert parsed.metric_name == "prewarm-llama-70b"
    assert (
        parse_metadata({"model": "Org/Llama_3:8B"}, defaults).metric_name
        == "prewarm-org-llama-3-8b"
    )


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "needs `model"),
        ({"model": "bad model"}, "malformed model id"),
        ({"model": "m", "quantile": "high"}, "not a number"),
        ({"model": "m", "quantile": "1.5"}, "must be in (0, 1)"),
        ({"model": "m", "leadTime": "soon"}, "cannot parse duration"),
        ({"model": "m", "leadTime": "3d"}, "beyond one day"),
        ({"model": "m", "targetPerReplica": "0"}, "must be > 0"),
        ({"model": "m", "targetPerReplica": "nan"}, "finite"),
        ({"model": "m", "activationProbability": "0"}, "(0, 1]"),
    ],
)
def test_bad_metadata_is_invalid_input(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(
        InvalidInput,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        parse_metadata(metadata, KedaConfig())


def test_metric_is_the_max_over_the_lead_window_and_observed() -> None:
    # Steps of 60 s starting now: median counts 6, 12, 30, 60 -> p90 9, 18, 45, 90 per minute.
    forecast = make_forecast("llama-70b", start_s=NOW)
    none = ActiveOverrides(now_s=NOW)
    reading = evaluate(query(), forecast=forecast, observed_rps=None, overrides=none, now_s=NOW)
    # [now, now + 120 s] covers steps 0 and 1 (and the boundary of 2): p90 max = 18/60 per s.
    assert reading.forecast_rps == pytest.approx(18 / 60)
    assert reading.value_rps == pytest.approx(18 / 60)
    longer = evaluate(
        query(lead_time_s=200), forecast=forecast, observed_rps=None, overrides=none, now_s=NOW
    )
    assert longer.value_rps == pytest.approx(90 / 60)
    observed = evaluate(query(), forecast=forecast, observed_rps=2.0, overrides=none, now_s=NOW)
    assert observed.value_rps == 2.0
    # Halfway through the horizon the window starts at the current step.
    later = evaluate(
        query(lead_time_s=0), forecast=forecast, observed_rps=None, overrides=none, now_s=NOW + 150
    )
    assert later.value_rps == pytest.approx(45 / 60)
    # Past the end of the forecast only observed traffic counts.
    stale = evaluate(query(), forecast=forecast, observed_rps=0.5, overrides=none, now_s=NOW + 3600)
    assert stale.forecast_rps is None
    assert stale.value_rps == 0.5


def test_is_active_turns_true_before_predicted_traffic() -> None:
    # Idle now, a request very likely in the third minute.
    forecast = make_forecast(
        "llama-70b", start_s=NOW, counts=[0.0, 0.0, 3.0, 3.0], p_active=[0.0, 0.01, 0.95, 0.95]
    )
    none = ActiveOverrides(now_s=NOW)
    short = evaluate(
        query(lead_time_s=60), forecast=forecast, observed_rps=0.0, overrides=none, now_s=NOW
    )
    assert not short.active
    ahead = evaluate(
        query(lead_time_s=150), forecast=forecast, observed_rps=0.0, overrides=none, now_s=NOW
    )
    assert ahead.active
    assert ahead.p_request == pytest.approx(1 - 0.99 * 0.05)
    strict = evaluate(
        query(lead_time_s=150, activation_probability=0.99, target_per_replica=1.0),
        forecast=forecast,
        observed_rps=0.0,
        overrides=none,
        now_s=NOW,
    )
    assert not strict.active


def test_manual_floor_and_pause() -> None:
    forecast = make_forecast("llama-70b", start_s=NOW, counts=[0.0] * 4, p_active=[0.0] * 4)
    floor = ActiveOverrides(
        now_s=NOW,
        floors={LLAMA: FloorOverride(LLAMA, 4, NOW + 3600, (), "manual")},
    )
    reading = evaluate(query(), forecast=forecast, observed_rps=0.0, overrides=floor, now_s=NOW)
    assert reading.active
    assert reading.value_rps == pytest.approx(4 * 0.05)
    tier_only = ActiveOverrides(
        now_s=NOW, tiers={LLAMA: TierOverride(LLAMA, Tier.GPU, None, "pin")}
    )
    assert evaluate(
        query(), forecast=forecast, observed_rps=0.0, overrides=tier_only, now_s=NOW
    ).active
    paused = ActiveOverrides(now_s=NOW, floors=floor.floors, global_pause=True)
    reactive = evaluate(query(), forecast=forecast, observed_rps=0.3, overrides=paused, now_s=NOW)
    assert reactive.value_rps == 0.3
    assert reactive.active
    assert reactive.forecast_rps is None
    idle = evaluate(query(), forecast=forecast, observed_rps=None, overrides=paused, now_s=NOW)
    assert not idle.active
    assert idle.value_rps == 0.0


# ---------------------------------------------------------------------------------------------
# The gRPC contract, as KEDA calls it.


@pytest.fixture
def scaler(running: RunningServer) -> Iterator[externalscaler_pb2_grpc.ExternalScalerStub]:
    now = running.clock()
    running.view.forecast_map[LLAMA] = make_forecast(
        "llama-70b", start_s=now, counts=[0.0, 0.0, 30.0, 60.0], p_active=[0.0, 0.0, 1.0, 1.0]
    )
    with grpc.insecure_channel(running.address) as channel:
        yield externalscaler_pb2_grpc.ExternalScalerStub(channel)


def ref(**metadata: str) -> externalscaler_pb2.ScaledObjectRef:
    """A trigger as KEDA sends it: its metadata, with ``tokenFromEnv`` already resolved from the
    scale target's environment (a read token from a Secret)."""
    fields = {"scalerAddress": "x:1", "tokenFromEnv": READ_TOKEN, **metadata}
    return externalscaler_pb2.ScaledObjectRef(
        name="llama", namespace="serving", scalerMetadata=fields
    )


def test_get_metric_spec(scaler: externalscaler_pb2_grpc.ExternalScalerStub) -> None:
    reply = scaler.GetMetricSpec(ref(model="llama-70b", targetPerReplica="0.25"), timeout=5)
    assert len(reply.metricSpecs) == 1
    spec = reply.metricSpecs[0]
    assert (spec.metricName, spec.targetSizeFloat, spec.targetSize) == (
        "prewarm-llama-70b",
        0.25,
        1,
    )


def test_get_metrics_and_is_active_follow_the_lead_time(
    scaler: externalscaler_pb2_grpc.ExternalScalerStub,
) -> None:
    near = ref(model="llama-70b", leadTime="30s", quantile="0.5")
    ahead = ref(model="llama-70b", leadTime="3m", quantile="0.5")
    assert not scaler.IsActive(near, timeout=5).result
    assert scaler.IsActive(ahead, timeout=5).result
    request = externalscaler_pb2.GetMetricsRequest(
        scaledObjectRef=ahead, metricName="prewarm-llama-70b"
    )
    values = scaler.GetMetrics(request, timeout=5).metricValues
    assert len(values) == 1
    assert values[0].metricName == "prewarm-llama-70b"
    assert values[0].metricValueFloat == pytest.approx(1.0)  # 60 per minute at the median
    assert values[0].metricValue == 1
    zero = scaler.GetMetrics(externalscaler_pb2.GetMetricsRequest(scaledObjectRef=near), timeout=5)
    assert zero.metricValues[0].metricValueFloat == 0.0
    assert zero.metricValues[0].metricName == "prewarm-llama-70b"


def test_a_manual_warm_request_activates_the_scaler(
    running: RunningServer, scaler: externalscaler_pb2_grpc.ExternalScalerStub
) -> None:
    near = ref(model="llama-70b", leadTime="30s", targetPerReplica="2")
    assert not scaler.IsActive(near, timeout=5).result
    with grpc.insecure_channel(running.address) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        control.Warm(
            control_pb2.WarmRequest(model="llama-70b", replicas=3, duration_s=600),
            metadata=(("authorization", f"Bearer {WRITE_TOKEN}"),),
            timeout=5,
        )
    # The scaler reads what the cycle published: the daemon's next tick applies the request.
    assert not scaler.IsActive(near, timeout=5).result
    running.view.active = publish(running)
    assert scaler.IsActive(near, timeout=5).result
    values = scaler.GetMetrics(
        externalscaler_pb2.GetMetricsRequest(scaledObjectRef=near), timeout=5
    )
    assert values.metricValues[0].metricValueFloat == pytest.approx(6.0)  # 3 replicas x 2 req/s


def publish(running: RunningServer) -> ActiveOverrides:
    """What a daemon's cycle publishes from the stored manual state now."""
    state = running.run(running.store.load())
    return active_overrides(state, running.clock())


def test_bad_triggers_get_status_codes(scaler: externalscaler_pb2_grpc.ExternalScalerStub) -> None:
    for metadata, code in (
        ({}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": "ghost"}, grpc.StatusCode.NOT_FOUND),
        ({"model": "llama-70b", "quantile": "0.99"}, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            scaler.IsActive(ref(**metadata), timeout=5)
        assert caught.value.code() == code  # type: ignore[attr-defined]


def test_known_model_without_forecast_serves_observed(
    running: RunningServer, scaler: externalscaler_pb2_grpc.ExternalScalerStub
) -> None:
    running.view.observed[ModelId("mistral-7b")] = 0.75
    trigger = ref(model="mistral-7b")
    assert scaler.IsActive(trigger, timeout=5).result
    reply = scaler.GetMetrics(
        externalscaler_pb2.GetMetricsRequest(scaledObjectRef=trigger), timeout=5
    )
    assert reply.metricValues[0].metricValueFloat == 0.75


def test_stream_is_active_pushes_changes(
    running: RunningServer, scaler: externalscaler_pb2_grpc.ExternalScalerStub
) -> None:
    stream = scaler.StreamIsActive(ref(model="mistral-7b"), timeout=10)
    assert next(stream).result is False
    running.view.observed[ModelId("mistral-7b")] = 1.0
    assert next(stream).result is True
    running.view.observed[ModelId("mistral-7b")] = 0.0
    assert next(stream).result is False
    stream.cancel()


def test_stream_metric_spec_sends_the_spec_at_once(
    scaler: externalscaler_pb2_grpc.ExternalScalerStub,
) -> None:
    stream = scaler.StreamMetricSpec(ref(model="llama-70b", targetPerReplica="3"), timeout=10)
    first = next(stream)
    assert first.metricSpecs[0].targetSizeFloat == 3.0
    stream.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(scaler.StreamMetricSpec(ref(), timeout=5)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_streams_end_when_the_server_stops() -> None:
    handle = start_server()
    try:
        with grpc.insecure_channel(handle.address) as channel:
            scaler = externalscaler_pb2_grpc.ExternalScalerStub(channel)
            stream = scaler.StreamIsActive(ref(model="mistral-7b"), timeout=30)
            assert next(stream).result is False
            handle.run(handle.server.stop(5.0))
            assert list(stream) == []  # the stream finishes cleanly, well before its deadline
    finally:
        handle.loop.call_soon_threadsafe(handle.loop.stop)
        handle.thread.join(10)


def test_keda_needs_a_read_credential_unless_anonymous_is_set() -> None:
    handle = start_server()
    try:
        with grpc.insecure_channel(handle.address) as channel:
            scaler = externalscaler_pb2_grpc.ExternalScalerStub(channel)
            for bad in ("", "not-a-token-of-this-server"):
                with pytest.raises(grpc.RpcError) as caught:
                    scaler.GetMetricSpec(ref(model="llama-70b", tokenFromEnv=bad), timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            assert "tokenFromEnv" in caught.value.details()  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as streamed:
                next(
                    iter(scaler.StreamIsActive(ref(model="llama-70b", tokenFromEnv=""), timeout=5))
                )
            assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            # A read token in the trigger's metadata (KEDA resolves tokenFromEnv) or as gRPC
            # metadata (other clients) is enough; it only reads.
            reply = scaler.GetMetricSpec(ref(model="llama-70b"), timeout=5)
            assert reply.metricSpecs[0].metricName == "prewarm-llama-70b"
            reply = scaler.GetMetricSpec(
                ref(model="llama-70b", tokenFromEnv=""),
                metadata=(("authorization", f"Bearer {READ_TOKEN}"),),
                timeout=5,
            )
            assert reply.metricSpecs[0].metricName == "prewarm-llama-70b"
    finally:
        stop_server(handle)
    config = control_config()
    config = config.model_copy(
        update={"auth": config.auth.model_copy(update={"keda_anonymous": True})}
    )
    handle = start_server(config=config)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            scaler = externalscaler_pb2_grpc.ExternalScalerStub(channel)
            reply = scaler.GetMetricSpec(ref(model="llama-70b", tokenFromEnv=""), timeout=5)
            assert reply.metricSpecs[0].metricName == "prewarm-llama-70b"
    finally:
        stop_server(handle)


def test_a_gated_model_is_served_reactively(
    running: RunningServer, scaler: externalscaler_pb2_grpc.ExternalScalerStub
) -> None:
    ahead = ref(model="llama-70b", leadTime="3m", quantile="0.5")
    assert scaler.IsActive(ahead, timeout=5).result
    running.view.gated.add(LLAMA)  # the cycle's quality gate sent it back to reactive handling
    assert not scaler.IsActive(ahead, timeout=5).result
    request = externalscaler_pb2.GetMetricsRequest(scaledObjectRef=ahead)
    assert scaler.GetMetrics(request, timeout=5).metricValues[0].metricValueFloat == 0.0
    running.view.observed[LLAMA] = 0.4
    assert scaler.IsActive(ahead, timeout=5).result
    assert scaler.GetMetrics(request, timeout=5).metricValues[0].metricValueFloat == 0.4


def test_the_scaler_serves_the_manual_state_the_cycle_published() -> None:
    clock = Clock()
    handle = start_server(clock=clock)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            scaler = externalscaler_pb2_grpc.ExternalScalerStub(channel)
            trigger = ref(model="mistral-7b")
            control_pb2_grpc.ControlStub(channel).Pin(
                control_pb2.PinRequest(model="mistral-7b"),
                metadata=(("authorization", f"Bearer {WRITE_TOKEN}"),),
                timeout=5,
            )
            assert not scaler.IsActive(trigger, timeout=5).result  # not published yet
            handle.view.active = publish(handle)
            assert scaler.IsActive(trigger, timeout=5).result
    finally:
        stop_server(handle)
