"""Control metrics: manual overrides on the dashboards, calls by status, what KEDA was served."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from common.ids import ModelId, RequestId
from planner.actions import Tier
from prewarm.control.metrics import ControlMetrics
from prewarm.control.overrides import ControlState, ManualRequest, Pause, Pin, active_overrides
from protos import control_pb2, control_pb2_grpc, externalscaler_pb2, externalscaler_pb2_grpc
from tests.control.conftest import READ_TOKEN, WRITE_TOKEN, RunningServer, make_forecast
from tests.harness.rpc import bearer

NOW = 1_800_000_000.0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_override_gauges_follow_the_state() -> None:
    metrics = ControlMetrics()
    llama = ModelId("llama-70b")
    state = ControlState(
        requests=(
            ManualRequest(
                RequestId("req-0000000000000001"), llama, 4, None, NOW, NOW + 60, NOW, "a"
            ),
            ManualRequest(
                RequestId("req-0000000000000002"), llama, 2, None, NOW + 600, NOW + 900, NOW, "a"
            ),
        ),
        pins=(Pin(ModelId("mistral-7b"), Tier.HOST, NOW, "a"),),
        pauses=(Pause(None, NOW, "a"),),
    )
    metrics.observe_state(state, NOW)
    r = metrics.registry
    assert sample(r, "prewarm_manual_requests", model="llama-70b", state="active") == 1
    assert sample(r, "prewarm_manual_requests", model="llama-70b", state="pending") == 1
    assert sample(r, "prewarm_manual_floor_replicas", model="llama-70b") == 4
    assert sample(r, "prewarm_pinned", model="mistral-7b", tier="host") == 1
    assert sample(r, "prewarm_paused", model="*") == 1
    metrics.observe_state(ControlState(), NOW)  # everything gone: the series disappear
    assert sample(r, "prewarm_manual_floor_replicas", model="llama-70b") is None
    assert sample(r, "prewarm_paused", model="*") is None


def test_calls_are_counted_by_method_and_code(running: RunningServer) -> None:
    write = bearer(WRITE_TOKEN)
    running.view.forecast_map[ModelId("llama-70b")] = make_forecast(
        "llama-70b", start_s=running.clock()
    )
    with grpc.insecure_channel(running.address) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        control.Warm(
            control_pb2.WarmRequest(model="llama-70b", replicas=3, duration_s=60),
            metadata=write,
            timeout=5,
        )
        for metadata in (write, ()):
            with pytest.raises(grpc.RpcError):
                control.Warm(
                    control_pb2.WarmRequest(model="ghost", replicas=1, duration_s=60),
                    metadata=metadata,
                    timeout=5,
                )
        # The scaler serves what the daemon's cycle published: publish the stored manual state.
        running.view.active = active_overrides(running.state(), running.clock())
        scaler = externalscaler_pb2_grpc.ExternalScalerStub(channel)
        scaler.GetMetrics(
            externalscaler_pb2.GetMetricsRequest(
                scaledObjectRef=externalscaler_pb2.ScaledObjectRef(
                    scalerMetadata={
                        "model": "llama-70b",
                        "targetPerReplica": "1",
                        "tokenFromEnv": READ_TOKEN,
                    }
                )
            ),
            timeout=5,
        )
    r = running.server.metrics.registry
    assert sample(r, "prewarm_control_calls_total", method="Warm", code="OK") == 1
    assert sample(r, "prewarm_control_calls_total", method="Warm", code="NOT_FOUND") == 1
    assert sample(r, "prewarm_control_calls_total", method="Warm", code="UNAUTHENTICATED") == 1
    assert sample(r, "prewarm_control_calls_total", method="GetMetrics", code="OK") == 1
    assert sample(r, "prewarm_manual_floor_replicas", model="llama-70b") == 3
    assert sample(r, "prewarm_keda_metric_rps", model="llama-70b") == pytest.approx(3.0)
    assert sample(r, "prewarm_keda_active", model="llama-70b") == 1
