"""What the control API reads of the daemon: :class:`DaemonView` and :class:`Explanation`.

Owns: the read-only interface between the daemon (which implements it) and the control API and KEDA
scaler (which only read through it), and the :class:`Explanation` value ``prewarm explain`` shows.
Must not: reach into the daemon's internals, or do I/O. :func:`build_explanation` is a pure helper
the daemon can use to implement :meth:`DaemonView.explain` from the planner's ``ModelPlan``.
:class:`StaticDaemonView` is an in-memory implementation **for tests and demos** (and a
single-process dev setup), not what production runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from common.durations import format_duration
from common.errors import NotFound
from common.ids import ModelId
from forecaster.types import Forecast
from planner.actions import WarmPlan
from planner.leadtime import Stage, StartCosts
from planner.planner import ModelPlan
from prewarm.cycle.config import CycleConfig
from prewarm.cycle.manual import ActiveOverrides
from prewarm.cycle.step import CycleReport


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why the plan holds what it holds for one model, for people (``prewarm explain``).

    - ``forecast_summary``: one line, e.g. ``"p90 peaks at 3.2 req/s in 25m"``;
    - ``forecast_method``: the forecasting model chosen for it (``"mstl"``, ``"idle-histogram"``);
    - ``p_request_within_horizon``: P(at least one request within the planning horizon);
    - ``value``: predicted cold-start seconds saved by what the plan holds for the model;
    - ``lead_times_s``: the planned seconds of each stage (``node``, ``image``, ``container``,
      ``weights_remote`` / ``_disk`` / ``_host``, ``compile_cached`` / ``_cold``): a high quantile
      of the observed durations, the catalog's figure until there are enough; and, once measured,
      ``replica_start`` (a serving pod's containers started -> Ready, shown beside the stages it
      contains, not planned with); for a model whose engine sleeps, ``wake`` (its replicas'
      wake-up);
    - ``lead_observations``: how many observed durations each stage's figure rests on;
    - ``constraints``: what bound the plan for this model (``"gpu memory budget: 80 GB of 80 GB
      planned"``, ``"max_replicas 4 from the catalog"``); empty when nothing did;
    - ``actions``: the reasons of the plan's actions for the model;
    - ``summary``: one paragraph.
    """

    model: ModelId
    forecast_summary: str
    forecast_method: str
    p_request_within_horizon: float
    value: float
    lead_times_s: Mapping[str, float] = field(default_factory=dict)
    lead_observations: Mapping[str, int] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    summary: str = ""


def _forecast_summary(forecast: Forecast, quantile: float | None) -> str:
    levels = [q for q in forecast.quantiles if quantile is not None and abs(q - quantile) < 1e-9]
    if levels:
        series, label = forecast.quantile(levels[0]), f"p{round(levels[0] * 100):g}"
    else:
        series, label = forecast.mean, "mean"
    if forecast.horizon == 0:
        return "empty forecast"
    peak = int(series.argmax())
    rate = float(series[peak]) / forecast.step_s
    p_any = forecast.p_any_within(forecast.horizon)
    stale = " (stale: the history source failed)" if forecast.stale else ""
    return (
        f"{label} peaks at {rate:.3g} req/s in {format_duration(peak * forecast.step_s)}; "
        f"P(request within {format_duration(forecast.horizon * forecast.step_s)}) = "
        f"{p_any:.2f}{stale}"
    )


def build_explanation(
    model: ModelId,
    *,
    forecast: Forecast | None,
    model_plan: ModelPlan | None,
    plan: WarmPlan | None,
    quantile: float | None = None,
    lead_times_s: Mapping[str, float] | None = None,
    max_replicas: int | None = None,
    gpu_bytes_planned: int | None = None,
    gpu_budget_bytes: int | None = None,
    gated: bool = False,
) -> Explanation:
    """An :class:`Explanation` of ``model`` from the latest tick's values (pure).

    ``model_plan`` is the planner's per-model numbers; ``max_replicas`` the catalog's bound;
    ``gpu_bytes_planned`` / ``gpu_budget_bytes`` the plan's GPU total and cap; ``gated`` whether the
    forecast quality gate sent the model back to reactive handling. Constraints are named when they
    made the target smaller than what the forecast or the reactive floor asked for.
    """
    actions = tuple(
        action.reason
        for action in (plan.actions if plan is not None else ())
        if getattr(action, "model", None) == model
    )
    value = sum(
        action.value
        for action in (plan.actions if plan is not None else ())
        if getattr(action, "model", None) == model
    )
    constraints: list[str] = []
    summary = f"{model}: no plan yet."
    p_window = forecast.p_any_within(forecast.horizon) if forecast is not None else 0.0
    if gated:
        constraints.append("forecast quality gate failed: handled reactively (observed traffic)")
    if model_plan is not None:
        p_window = model_plan.p_window
        wanted = max(model_plan.floor_replicas, model_plan.forecast_replicas)
        if model_plan.target_replicas < wanted:
            if max_replicas is not None and model_plan.target_replicas >= max_replicas:
                constraints.append(f"max_replicas {max_replicas} from the catalog")
            else:
                budget = (
                    f": {gpu_bytes_planned / 1e9:.1f} GB of {gpu_budget_bytes / 1e9:.1f} GB planned"
                    if gpu_bytes_planned is not None and gpu_budget_bytes is not None
                    else ""
                )
                constraints.append(
                    f"GPU memory budget{budget}; {wanted - model_plan.target_replicas} of "
                    f"{wanted} wanted replicas did not fit"
                )
        if model_plan.floor_replicas > model_plan.forecast_replicas:
            constraints.append(
                f"reactive floor: observed traffic needs {model_plan.floor_replicas} replicas, "
                f"more than the forecast's {model_plan.forecast_replicas}"
            )
        if model_plan.target_replicas == 0 and model_plan.value_density < model_plan.hold_threshold:
            constraints.append(
                f"price of idle memory: value density {model_plan.value_density:.3g} is below "
                f"the {model_plan.hold_threshold:.3g} a warm hold needs now"
            )
        if model_plan.placement:
            constraints.append(model_plan.placement)
        held = "GPU" if model_plan.hold_gpu else "host memory" if model_plan.hold_host else None
        summary = (
            f"{model}: {model_plan.target_replicas} replicas planned (forecast "
            f"{model_plan.forecast_replicas}, reactive floor {model_plan.floor_replicas}); "
            f"weights {'held in ' + held if held else 'not held'}; P(request within the "
            f"{format_duration(model_plan.lead_s)} lead time) = {model_plan.p_window:.2f}."
        )
        if not value:
            value = model_plan.saved_s
    lead = dict(lead_times_s or {})
    if not lead and model_plan is not None:
        lead = {"total": model_plan.lead_s}
    return Explanation(
        model=model,
        forecast_summary=_forecast_summary(forecast, quantile) if forecast else "no forecast yet",
        forecast_method=forecast.method if forecast is not None else "",
        p_request_within_horizon=p_window,
        value=float(value),
        lead_times_s=lead,
        constraints=tuple(constraints),
        actions=actions,
        summary=summary,
    )


def explain_published(
    model: ModelId, report: CycleReport | None, *, forecast: Forecast | None, config: CycleConfig
) -> Explanation:
    """An :class:`Explanation` of ``model`` from what the latest cycle published (``report``; None
    before the first): its plan, the planner's numbers, the gate and the manual state."""
    explanation = build_explanation(
        model,
        forecast=forecast,
        model_plan=report.model_plans.get(model) if report is not None else None,
        plan=report.plan if report is not None else None,
        quantile=config.planning_quantile,
        max_replicas=config.catalog.spec(model).max_replicas,
        gpu_bytes_planned=report.gpu_bytes_planned if report is not None else None,
        gpu_budget_bytes=config.planner.gpu_memory_budget_bytes,
        gated=report is not None and model in report.gated,
    )
    if report is not None:
        spec = config.catalog.spec(model)
        costs = StartCosts.plan(report.lead, spec, config.planner.stages)
        stages = costs.stages()
        replica = report.lead.learned.get((Stage.REPLICA, str(model)))
        if replica is not None:
            stages["replica_start"] = replica
        if spec.engine is not None and spec.engine.sleep:
            stages["wake"] = report.lead.seconds(Stage.WAKE, str(model), spec.engine.wake_s)
        explanation = replace(
            explanation,
            lead_times_s=stages,
            lead_observations=report.lead.observations(spec),
        )
    extra = report.overrides.describe(model) if report is not None else ()
    if not extra:
        return explanation
    return replace(explanation, constraints=(*explanation.constraints, *extra))


@runtime_checkable
class DaemonView(Protocol):
    """The daemon's state as the control API sees it. All methods are cheap, non-blocking reads of
    the latest tick's results (no I/O); the control API calls them from the event loop.
    """

    def forecasts(self) -> Mapping[ModelId, Forecast]:
        """The latest forecast of every model (empty before the first tick)."""
        ...

    def plan(self) -> WarmPlan | None:
        """The latest plan, or None before the first plan."""
        ...

    def explain(self, model: ModelId) -> Explanation:
        """Why the plan holds what it holds for ``model``; :class:`NotFound` if unknown."""
        ...

    def known_models(self) -> frozenset[ModelId]:
        """Every model the daemon knows (from history and the catalog)."""
        ...

    def observed_rps(self, model: ModelId) -> float | None:
        """The latest observed request rate of ``model`` (requests/s), or None if unknown."""
        ...

    def gated_models(self) -> frozenset[ModelId]:
        """Models the latest cycle's forecast quality gate sent back to reactive handling."""
        ...

    def overrides(self) -> ActiveOverrides:
        """The manual requests, pins and pauses the latest cycle applied (empty before one)."""
        ...

    def is_leader(self) -> bool:
        """Whether this replica holds the leader Lease (only the leader accepts writes)."""
        ...

    def leader_address(self) -> str | None:
        """``host:port`` of the leader's control API, or None when unknown."""
        ...


@dataclass
class StaticDaemonView:
    """An in-memory :class:`DaemonView` whose fields tests (and demos) set directly.

    For tests and demos only: production uses the daemon's implementation. ``explain`` returns the
    entry in ``explanations`` or, for a known model without one, :func:`build_explanation` of its
    forecast and the plan.
    """

    forecast_map: dict[ModelId, Forecast] = field(default_factory=dict)
    current_plan: WarmPlan | None = None
    explanations: dict[ModelId, Explanation] = field(default_factory=dict)
    models: set[ModelId] = field(default_factory=set)
    observed: dict[ModelId, float] = field(default_factory=dict)
    gated: set[ModelId] = field(default_factory=set)
    active: ActiveOverrides = field(default_factory=lambda: ActiveOverrides(now_s=0.0))
    leader: bool = True
    leader_at: str | None = None

    def forecasts(self) -> Mapping[ModelId, Forecast]:
        """See :meth:`DaemonView.forecasts`."""
        return dict(self.forecast_map)

    def plan(self) -> WarmPlan | None:
        """See :meth:`DaemonView.plan`."""
        return self.current_plan

    def explain(self, model: ModelId) -> Explanation:
        """See :meth:`DaemonView.explain`."""
        if model in self.explanations:
            return self.explanations[model]
        if model not in self.known_models():
            raise NotFound(f"unknown model {model!r}; check the name against `prewarm plan`")
        return build_explanation(
            model, forecast=self.forecast_map.get(model), model_plan=None, plan=self.current_plan
        )

    def known_models(self) -> frozenset[ModelId]:
        """See :meth:`DaemonView.known_models`: ``models`` plus every forecast model."""
        return frozenset(self.models) | frozenset(self.forecast_map)

    def observed_rps(self, model: ModelId) -> float | None:
        """See :meth:`DaemonView.observed_rps`."""
        return self.observed.get(model)

    def gated_models(self) -> frozenset[ModelId]:
        """See :meth:`DaemonView.gated_models`."""
        return frozenset(self.gated)

    def overrides(self) -> ActiveOverrides:
        """See :meth:`DaemonView.overrides`."""
        return self.active

    def is_leader(self) -> bool:
        """See :meth:`DaemonView.is_leader`."""
        return self.leader

    def leader_address(self) -> str | None:
        """See :meth:`DaemonView.leader_address`."""
        return self.leader_at
