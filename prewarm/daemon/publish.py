"""Publishes what a decision cycle decided as the daemon's Prometheus metrics.

Owns: turning a :class:`prewarm.cycle.step.CycleReport` (and the outcomes of applying its plan)
into the ``prewarm_*`` series the dashboards read, creating a model's series when it appears and
dropping them when it disappears. Must not: decide anything or do I/O beyond the metrics registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import structlog

from common.ids import ModelId
from planner.actions import Action, ActionResult
from planner.config import PlannerConfig
from planner.leadtime import Stage
from prewarm.cycle.step import CycleReport
from prewarm.daemon.metrics import DaemonMetrics

FALLBACKS_NAMED = 10
"""Models named one per line when the gate sends them back to reactive in one cycle."""

log = structlog.get_logger(__name__)

PLAN_KINDS = ("NodeCapacity", "ImagePrepull", "ReplicaFloor", "Preload", "Evict")


def kind(action: Action) -> str:
    """The action's type name (the ``type`` label of the action metrics)."""
    return type(action).__name__


class Publisher:
    """Keeps the daemon's metrics in step with the latest cycle."""

    def __init__(
        self,
        metrics: DaemonMetrics,
        *,
        planner_config: PlannerConfig,
        horizons_steps: Sequence[int],
        planning_quantile: float,
    ) -> None:
        self._metrics = metrics
        self._planner_config = planner_config
        self._horizons = list(horizons_steps)
        self._planning_quantile = planning_quantile
        self._models: set[ModelId] = set()

    def forecasts_stale(self, models: Iterable[ModelId]) -> None:
        """The history source is down: every kept forecast is stale."""
        for model in models:
            self._metrics.forecast_stale.labels(model=model).set(1)

    def _fallbacks(self, report: CycleReport) -> None:
        """One warning per model the quality gate newly sends back to reactive, with the limit
        it broke; past ``FALLBACKS_NAMED`` models in one cycle, one line counts the rest."""
        newly = sorted(report.newly_gated)
        for model in newly[:FALLBACKS_NAMED]:
            reason = report.fallback_reasons.get(model, "forecast too poor to act on")
            log.warning("model falls back to reactive", model=model, reason=reason)
        if len(newly) > FALLBACKS_NAMED:
            log.warning(
                "more models fall back to reactive",
                count=len(newly) - FALLBACKS_NAMED,
                metric="prewarm_model_reactive_fallback",
            )

    def cycle(self, report: CycleReport, *, fresh: bool) -> None:
        """Publish one cycle's forecasts, gate, traffic and plan."""
        metrics = self._metrics
        if fresh:
            self._forecasts(report)
        for model, quality in report.quality.items():
            metrics.forecast_error.labels(model=model).set(quality.error_ratio)
            metrics.under_forecast.labels(model=model).set(quality.under_forecast_ratio)
            metrics.reactive_fallback.labels(model=model).set(1 if model in report.gated else 0)
        self._fallbacks(report)
        for model, rate in report.observed_rps.items():
            metrics.observed_rps.labels(model=model).set(rate)
        for served in report.served:
            counter = metrics.requests_warm if served.warm else metrics.requests_cold
            counter.labels(model=served.model).inc(served.requests)
            if served.cold_start_avoided:
                metrics.cold_starts_avoided.labels(model=served.model).inc()
        counts: dict[str, int] = {}
        for action in report.plan.actions:
            counts[kind(action)] = counts.get(kind(action), 0) + 1
        for name in PLAN_KINDS:
            metrics.plan_actions.labels(type=name).set(counts.get(name, 0))
        for action, _cap in report.deferred:
            metrics.actions.labels(type=kind(action), result="skipped_budget").inc()
        # Per-stage lead: the planned (learned-quantile or default) seconds of node provisioning,
        # and the longest whole chain the planner worked with this cycle.
        default_node_s = self._planner_config.stages.node_provision_s
        metrics.lead_time.labels(stage="node").set(
            max(
                [
                    report.lead.seconds(Stage.NODE, pool, default_node_s)
                    for pool in report.pools_seen
                ]
                or [default_node_s]
            )
        )
        chains = [p.lead_s for p in report.model_plans.values()]
        metrics.lead_time.labels(stage="chain").set(max(chains, default=0.0))

    def _forecasts(self, report: CycleReport) -> None:
        metrics = self._metrics
        for model in self._models - set(report.forecasts):
            metrics.forget_model(model)
        for model, forecast in report.forecasts.items():
            if model not in self._models:
                # Initialise the per-model counters at 0, so rate() and increase() see the
                # series from its first sample instead of missing the first increment.
                for counter in (
                    metrics.requests_warm,
                    metrics.requests_cold,
                    metrics.cold_starts_avoided,
                ):
                    counter.labels(model=model)
            metrics.forecast_stale.labels(model=model).set(0)
            levels = {"mean": forecast.mean}
            levels.update({f"{q:g}": forecast.quantile(q) for q in forecast.quantiles})
            metrics.publish_forecast(
                model, step_s=forecast.step_s, horizons_steps=self._horizons, levels=levels
            )
        self._models = set(report.forecasts)

    def outcomes(self, outcomes: Sequence[ActionResult]) -> None:
        """Count each applied action's result."""
        for outcome in outcomes:
            self._metrics.actions.labels(type=kind(outcome.action), result=outcome.result).inc()

    def failed(self, actions: Iterable[Action]) -> None:
        """The applier failed as a whole: every action counts as an error."""
        for action in actions:
            self._metrics.actions.labels(type=kind(action), result="error").inc()
