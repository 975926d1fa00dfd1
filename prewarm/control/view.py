"""What the control API reads of the daemon: :class:`DaemonView` and :class:`Explanation`.

Owns: the read-only interface between the daemon (which implements it) and the control API and KEDA
scaler (which only read through it), and the :class:`Explanation` value ``prewarm explain`` shows.
Must not: reach into the daemon's internals, or do I/O. :class:`StaticDaemonView` is an in-memory
implementation **for tests and demos** (and a single-process dev setup), not what production runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from common.errors import NotFound
from common.ids import ModelId
from forecaster.types import Forecast
from planner.actions import WarmPlan


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why the plan holds what it holds for one model, for people (``prewarm explain``).

    - ``forecast_summary``: one line, e.g. ``"p90 peaks at 3.2 req/s in 25m"``;
    - ``forecast_method``: the forecasting model chosen for it (``"mstl"``, ``"idle-histogram"``);
    - ``p_request_within_horizon``: P(at least one request within the planning horizon);
    - ``value``: predicted cold-start seconds saved by what the plan holds for the model;
    - ``lead_times_s``: measured lead time per stage (``node``, ``image``, ``weights``,
      ``compile``);
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
    constraints: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    summary: str = ""


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
    entry in ``explanations`` or, for a known model without one, a summary built from the forecast.
    """

    forecast_map: dict[ModelId, Forecast] = field(default_factory=dict)
    current_plan: WarmPlan | None = None
    explanations: dict[ModelId, Explanation] = field(default_factory=dict)
    models: set[ModelId] = field(default_factory=set)
    observed: dict[ModelId, float] = field(default_factory=dict)
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
        forecast = self.forecast_map.get(model)
        if forecast is None:
            return Explanation(
                model=model,
                forecast_summary="no forecast yet",
                forecast_method="",
                p_request_within_horizon=0.0,
                value=0.0,
                summary=f"{model} has no forecast yet; the plan holds nothing for it.",
            )
        peak = float(forecast.mean.max()) / forecast.step_s if forecast.horizon else 0.0
        p_any = forecast.p_any_within(forecast.horizon)
        return Explanation(
            model=model,
            forecast_summary=f"mean peaks at {peak:.3g} req/s; P(request) = {p_any:.2f}",
            forecast_method=forecast.method,
            p_request_within_horizon=p_any,
            value=0.0,
            summary=f"{model}: forecast by {forecast.method}.",
        )

    def known_models(self) -> frozenset[ModelId]:
        """See :meth:`DaemonView.known_models`: ``models`` plus every forecast model."""
        return frozenset(self.models) | frozenset(self.forecast_map)

    def observed_rps(self, model: ModelId) -> float | None:
        """See :meth:`DaemonView.observed_rps`."""
        return self.observed.get(model)

    def is_leader(self) -> bool:
        """See :meth:`DaemonView.is_leader`."""
        return self.leader

    def leader_address(self) -> str | None:
        """See :meth:`DaemonView.leader_address`."""
        return self.leader_at
