"""The daemon's Prometheus metrics: what the dashboards and alert rules read.

Owns metric names, labels and units (the contract with ``dashboards/`` and the chart's
PrometheusRule). Must not: compute forecasts or decide anything. The registry is a constructor
parameter so tests use a fresh one.

Forecasts are published per model, quantile and horizon as requests per second, so a dashboard
can overlay forecast and actual:
``prewarm_forecast_rps{model="m",quantile="0.9",horizon="15m"} offset 15m`` against
``prewarm_observed_rps{model="m"}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.durations import format_duration
from common.ids import ModelId


class DaemonMetrics:
    """All metrics the daemon exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.forecast_rps = Gauge(
            "prewarm_forecast_rps",
            "Forecast request rate (requests/s) for the step starting `horizon` from now.",
            ["model", "quantile", "horizon"],
            registry=r,
        )
        self.observed_rps = Gauge(
            "prewarm_observed_rps",
            "Observed request rate (requests/s) in the latest complete step.",
            ["model"],
            registry=r,
        )
        self.forecast_error = Gauge(
            "prewarm_forecast_error_ratio",
            "Live forecast error: rolling mean |actual - forecast| / mean actual, per model.",
            ["model"],
            registry=r,
        )
        self.under_forecast = Gauge(
            "prewarm_under_forecast_ratio",
            "Share of recent steps where actual exceeded the planning-quantile forecast.",
            ["model"],
            registry=r,
        )
        self.forecast_stale = Gauge(
            "prewarm_forecast_stale",
            "1 when the model's forecast was not refreshed in the latest tick.",
            ["model"],
            registry=r,
        )
        self.reactive_fallback = Gauge(
            "prewarm_model_reactive_fallback",
            "1 when the quality gate sent the model back to reactive-only handling.",
            ["model"],
            registry=r,
        )
        self.plan_actions = Gauge(
            "prewarm_plan_actions",
            "Actions in the latest plan, by type.",
            ["type"],
            registry=r,
        )
        self.actions = Counter(
            "prewarm_actions",
            "Actions applied, by type and result (ok, error, dry_run, skipped_budget).",
            ["type", "result"],
            registry=r,
        )
        self.lead_time = Gauge(
            "prewarm_stage_lead_time_seconds",
            "Planned lead time per stage (node, image, weights_disk, weights_host, weights_gpu, "
            "compile).",
            ["stage"],
            registry=r,
        )
        self.tick_seconds = Histogram(
            "prewarm_tick_duration_seconds",
            "Wall time of one daemon tick.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60),
            registry=r,
        )
        self.ticks = Counter(
            "prewarm_ticks", "Daemon ticks, by result (ok, skipped, error).", ["result"], registry=r
        )
        self.history_errors = Counter(
            "prewarm_history_errors",
            "History queries the source refused for good (a bad query, missing permission), by "
            "error kind; the tick goes on with the forecasts it has.",
            ["kind"],
            registry=r,
        )
        self.history_seconds = Gauge(
            "prewarm_history_seconds",
            "History the source holds per model (from its oldest sample, at most the window); "
            "below prewarm_history_window_seconds the model is forecast from what exists.",
            ["model"],
            registry=r,
        )
        self.history_window_seconds = Gauge(
            "prewarm_history_window_seconds",
            "The configured history window (forecaster.history_window_s).",
            registry=r,
        )
        self.is_leader = Gauge(
            "prewarm_is_leader", "1 when this replica holds the leader Lease.", registry=r
        )
        self.active_mode = Gauge(
            "prewarm_active_mode", "1 in active mode, 0 in advisory mode.", registry=r
        )
        self.requests_warm = Counter(
            "prewarm_requests_warm",
            "Observed requests that arrived in a step when the model had a ready replica.",
            ["model"],
            registry=r,
        )
        self.requests_cold = Counter(
            "prewarm_requests_cold",
            "Observed requests that arrived in a step when the model had no ready replica.",
            ["model"],
            registry=r,
        )
        self.cold_starts_avoided = Counter(
            "prewarm_cold_starts_avoided",
            "Steps with traffic after a silence longer than the autoscaler's cooldown "
            "(daemon.autoscaler_cooldown_s) that found a ready replica: the reactive autoscaler "
            "alone would have scaled to zero and started cold.",
            ["model"],
            registry=r,
        )

    def publish_forecast(
        self,
        model: ModelId,
        *,
        step_s: float,
        horizons_steps: Iterable[int],
        levels: Mapping[str, Iterable[float]],
    ) -> None:
        """Set ``prewarm_forecast_rps`` for each horizon (in steps) and quantile label.

        ``levels`` maps a quantile label (``"mean"``, ``"0.5"``, ``"0.9"``) to the forecast counts
        per step; counts are divided by ``step_s`` to give requests per second.
        """
        horizons = list(horizons_steps)
        for label, counts in levels.items():
            values = list(counts)
            for steps in horizons:
                if steps < len(values):
                    self.forecast_rps.labels(
                        model=model, quantile=label, horizon=format_duration(steps * step_s)
                    ).set(values[steps] / step_s)

    def forget_model(self, model: ModelId) -> None:
        """Drop every series of a model that no longer exists, so dashboards do not show ghosts."""
        for metric in (
            self.history_seconds,
            self.observed_rps,
            self.forecast_error,
            self.under_forecast,
            self.forecast_stale,
            self.reactive_fallback,
        ):
            try:
                metric.remove(model)
            except KeyError:
                continue
        for labels in list(self._label_sets(self.forecast_rps)):
            if labels[0] == model:
                self.forecast_rps.remove(*labels)

    @staticmethod
    def _label_sets(gauge: Gauge) -> Iterable[tuple[str, ...]]:
        for sample_family in gauge.collect():
            for sample in sample_family.samples:
                yield tuple(sample.labels[name] for name in ("model", "quantile", "horizon"))
