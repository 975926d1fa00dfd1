"""Prometheus metrics of the control API and the KEDA scaler.

Owns the metric names and labels of manual overrides (so a manual request is visible on the
dashboards next to the plan it changed), control-API calls by method and status, and what the KEDA
scaler last served. Must not: decide anything. The registry is a constructor parameter: the daemon
passes its own (``DaemonMetrics.registry``) so everything is on one ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from common.ids import ModelId
from prewarm.control.overrides import ControlState, active_overrides

ALL_MODELS = "*"
"""The ``model`` label of a global pause."""


class ControlMetrics:
    """All control metrics, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "prewarm_control_calls_total",
            "Control API and KEDA scaler calls, by method and gRPC status code.",
            ["method", "code"],
            registry=r,
        )
        self.manual_requests = Gauge(
            "prewarm_manual_requests",
            "Stored manual warm requests, by model and state (pending or active).",
            ["model", "state"],
            registry=r,
        )
        self.manual_floor = Gauge(
            "prewarm_manual_floor_replicas",
            "Replica floor that manual requests in force put on a model.",
            ["model"],
            registry=r,
        )
        self.pinned = Gauge(
            "prewarm_pinned", "1 while a model is pinned in a tier.", ["model", "tier"], registry=r
        )
        self.paused = Gauge(
            "prewarm_paused",
            "1 while a model is paused (model '*': every model).",
            ["model"],
            registry=r,
        )
        self.keda_metric = Gauge(
            "prewarm_keda_metric_rps",
            "The request rate the KEDA external scaler last returned for a model.",
            ["model"],
            registry=r,
        )
        self.keda_active = Gauge(
            "prewarm_keda_active",
            "What the KEDA external scaler last answered to IsActive (1 or 0).",
            ["model"],
            registry=r,
        )

    def observe_call(self, method: str, code: str) -> None:
        """Count one call of ``method`` (``Warm``, ``GetMetrics``...) that ended with ``code``."""
        self.calls.labels(method=method, code=code).inc()

    def observe_state(self, state: ControlState, now_s: float) -> None:
        """Set the override gauges from ``state`` at ``now_s`` (replacing previous values).

        The daemon calls this every tick (it reads the state anyway); the service after each write.
        """
        for gauge in (self.manual_requests, self.manual_floor, self.pinned, self.paused):
            gauge.clear()
        for request in state.requests:
            if request.is_expired(now_s):
                continue
            phase = "active" if request.is_active(now_s) else "pending"
            self.manual_requests.labels(model=request.model, state=phase).inc()
        overrides = active_overrides(state, now_s)
        for model, floor in overrides.floors.items():
            self.manual_floor.labels(model=model).set(floor.min_replicas)
        for model, tier in overrides.pinned.items():
            self.pinned.labels(model=model, tier=tier.name.lower()).set(1)
        for model in overrides.paused:
            self.paused.labels(model=model).set(1)
        if overrides.global_pause:
            self.paused.labels(model=ALL_MODELS).set(1)

    def observe_keda(self, model: ModelId, *, value_rps: float, active: bool) -> None:
        """Record what the scaler served for ``model``."""
        self.keda_metric.labels(model=model).set(value_rps)
        self.keda_active.labels(model=model).set(1 if active else 0)
