"""The daemon's tick: fetch history -> observe the cluster -> step the cycle -> apply -> publish.

Owns: the order of one tick and its failure policy, the latest published cycle (the control API's
read side, :class:`prewarm.control.view.DaemonView`), and the lifecycle of the loop (stop event, a
per-tick time budget on shutdown). Must not: decide anything (that is
:func:`prewarm.cycle.step.step`, the same function the simulator behind ``prewarm bench`` runs) or
talk to Prometheus, Kubernetes or the agents directly: those are the ``HistorySource``,
``ClusterObserver`` and ``PlanApplier`` passed in (real ones built in :mod:`prewarm.daemon.app`).

Failure policy: a history source that fails with :class:`TemporaryError` keeps the last good
forecasts marked stale and the cycle still plans (the reactive floor comes from the cluster
observation); a scoped failure of one query (a series without the model label, a query rejected
while others answered: the issues of the source's :class:`~forecaster.sources.SourceReport`) is
counted in ``prewarm_history_errors_total`` and shown in ``/readyz`` while the rest of the history
is used; history shorter than the window (a Prometheus retention shorter than
``forecaster.history_window_s``) is forecast from what exists, said once in the log, in
``prewarm_history_seconds`` and in ``/readyz``; a control store that cannot be read keeps the
last manual state; an observer failure skips the rest of the tick (the history it fetched waits
for the next one); an applier failure is counted and retried next tick; a tick never raises out
of :meth:`Daemon.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from common.errors import NotFound, PrewarmError, TemporaryError
from common.ids import ModelId
from forecaster.sources import SourceReport
from forecaster.types import Forecast, ForecastEngine, SeriesBatch
from planner.actions import ActionResult, WarmPlan
from planner.catalog import Catalog
from planner.config import PlannerConfig
from planner.planner import ModelPlan
from prewarm.control.view import Explanation, explain_published
from prewarm.cycle.config import CycleConfig
from prewarm.cycle.forecasting import ForecastFeed
from prewarm.cycle.interfaces import ClusterObserver, ClusterSnapshot, HistorySource, PlanApplier
from prewarm.cycle.manual import ActiveOverrides, ControlState
from prewarm.cycle.step import CycleInputs, CycleReport, CycleState, step
from prewarm.cycle.traffic import joined
from prewarm.daemon.config import DaemonConfig
from prewarm.daemon.metrics import DaemonMetrics
from prewarm.daemon.publish import Publisher

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did (for logs, tests and the control API)."""

    now_s: float
    fresh: bool
    models: int
    plan: WarmPlan | None
    applied: tuple[ActionResult, ...]
    deferred: int
    gated: frozenset[ModelId]


class Daemon:
    """One prewarm daemon process. Also serves the control API's read side (a ``DaemonView``)."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        source: HistorySource,
        engine: ForecastEngine,
        observer: ClusterObserver,
        applier: PlanApplier | None,
        catalog: Catalog,
        planner_config: PlannerConfig,
        horizon_s: float,
        planning_quantile: float,
        step_s: float,
        metrics: DaemonMetrics | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        leader_address: Callable[[], str | None] = lambda: None,
        control_state: Callable[[], Awaitable[ControlState]] | None = None,
        source_report: Callable[[], SourceReport] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._source = source
        self._observer = observer
        self._applier = applier
        self._catalog = catalog
        self._cycle_config = CycleConfig(
            planner=planner_config,
            catalog=catalog,
            interval_s=config.tick_s,
            step_s=step_s,
            planning_quantile=planning_quantile,
            quality_gate=config.quality_gate,
            budget=config.budget,
            autoscaler_cooldown_s=config.autoscaler_cooldown_s,
        )
        self._feed = ForecastFeed(
            engine, step_s=step_s, horizon_s=horizon_s, planning_quantile=planning_quantile
        )
        self._state = CycleState.initial(self._cycle_config)
        self._report: CycleReport | None = None
        self._snapshot: ClusterSnapshot | None = None
        self._unstepped: SeriesBatch | None = None
        """History fetched by ticks whose cycle did not run (the observer failed)."""
        self.metrics = metrics if metrics is not None else DaemonMetrics()
        self._publisher = Publisher(
            self.metrics,
            planner_config=planner_config,
            horizons_steps=[round(h / step_s) for h in config.forecast_horizons_s],
            planning_quantile=planning_quantile,
        )
        self._is_leader = is_leader
        self._leader_address = leader_address
        self._control_state = control_state
        self._clock = clock
        self._source_report = source_report
        self._short_history_logged = False
        self._ticks_ok = 0
        self._problems: dict[str, str] = {}
        self.metrics.active_mode.set(1 if config.mode == "active" else 0)

    # -- read side (DaemonView) -------------------------------------------------------------

    def published(self) -> CycleReport | None:
        """The latest cycle's report, or None before the first cycle."""
        return self._report

    def observed(self) -> ClusterSnapshot | None:
        """The cluster as the latest successful observation saw it (None before one)."""
        return self._snapshot

    def forecasts(self) -> Mapping[ModelId, Forecast]:
        """The latest forecast per model (stale ones marked)."""
        return dict(self._feed.forecasts)

    def plan(self) -> WarmPlan | None:
        """The latest plan, or None before the first tick."""
        return self._report.plan if self._report is not None else None

    def model_plans(self) -> Mapping[ModelId, ModelPlan]:
        """The planner's per-model numbers from the latest tick."""
        return dict(self._report.model_plans) if self._report is not None else {}

    def known_models(self) -> frozenset[ModelId]:
        """Models seen in history or the catalog."""
        return frozenset(self._feed.forecasts) | frozenset(self._catalog.specs)

    def gated_models(self) -> frozenset[ModelId]:
        """Models the quality gate currently sends back to reactive handling."""
        return self._report.gated if self._report is not None else frozenset()

    def is_leader(self) -> bool:
        """Whether this replica may act."""
        return self._is_leader()

    def leader_address(self) -> str | None:
        """``host:port`` of the leader's control API (from the Lease), or None when unknown."""
        return self._leader_address()

    def observed_rps(self, model: ModelId) -> float | None:
        """The latest observed request rate of ``model`` (requests/s), or None if unknown."""
        return self._state.traffic.observed_rps(model)

    def overrides(self) -> ActiveOverrides:
        """The manual requests, pins and pauses in force at the latest tick."""
        return self._report.overrides if self._report is not None else ActiveOverrides(now_s=0.0)

    def explain(self, model: ModelId) -> Explanation:
        """Why the plan holds what it holds for ``model``; :class:`NotFound` if unknown."""
        if model not in self.known_models():
            raise NotFound(
                f"unknown model {model!r}: prewarm knows {len(self.known_models())} models; "
                "check the name against `prewarm plan`"
            )
        return explain_published(
            model,
            self._report,
            forecast=self._feed.forecasts.get(model),
            config=self._cycle_config,
        )

    def ready(self) -> bool:
        """Ready once one tick completed (probes use this)."""
        return self._ticks_ok > 0

    def problems(self) -> list[str]:
        """What is misconfigured right now while the ticks go on (``/readyz`` shows it)."""
        return sorted(self._problems.values())

    # -- one tick ----------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        """Run one tick. Raises only for programming errors; I/O failures are handled."""
        started = time.perf_counter()
        now_s = self._clock()
        history, fresh = await self._fetch(now_s)
        forecasts = self._feed.refresh(history) if fresh else self._feed.mark_stale()
        if not fresh:
            self._publisher.forecasts_stale(forecasts)
        models = sorted(set(forecasts) | set(self._catalog.specs))
        history = joined(self._unstepped, history)
        try:
            snapshot = await self._observer.observe(now_s=now_s, models=models)
        except (PrewarmError, OSError) as error:
            log.warning("cluster observation failed; tick skipped", error=str(error))
            self._unstepped = history
            self.metrics.ticks.labels(result="skipped").inc()
            gated = self._state.gated
            return TickReport(now_s, fresh, len(models), None, (), 0, gated)
        self._unstepped = None
        self._snapshot = snapshot
        inputs = CycleInputs(
            now_s=now_s,
            forecasts=forecasts,
            snapshot=snapshot,
            history=history,
            fresh=fresh,
            control=await self._load_control(),
        )
        result = step(inputs, self._state, self._cycle_config)
        self._state, report = result.state, result.report
        self._report = report
        # An empty plan is applied too: the actuator restores what no action asks for any more.
        # Under a global pause nothing is applied, so nothing is restored either.
        paused = report.overrides.global_pause
        outcomes = [] if paused else await self._apply(result.plan)
        self._publisher.cycle(report, fresh=fresh)
        self._ticks_ok += 1
        self.metrics.ticks.labels(result="ok").inc()
        self.metrics.tick_seconds.observe(time.perf_counter() - started)
        return TickReport(
            now_s,
            fresh,
            len(models),
            report.plan,
            tuple(outcomes),
            len(report.deferred),
            report.gated,
        )

    async def _fetch(self, now_s: float) -> tuple[SeriesBatch | None, bool]:
        """New history and whether the source answered."""
        stale = "keeping stale forecasts" if self._feed.forecasts else "no forecasts yet"
        try:
            history = await self._source.fetch(now_s=now_s)
        except TemporaryError as error:
            log.warning(f"history source unavailable; {stale}", error=str(error))
            return None, False
        except PrewarmError as error:
            # A bad query (400) or a missing permission (401/403): retrying will not help, but
            # the rest of the tick (manual requests, floor restores, the agents) goes on.
            problem = f"history source refused the query: {error}"
            if self._problems.get("history") != problem:
                log.error(f"{problem}; {stale} until the configuration is fixed")
            self._problems["history"] = problem
            self.metrics.history_errors.labels(kind=type(error).__name__).inc()
            return None, False
        self._problems.pop("history", None)
        if self._source_report is not None:
            self._note_source(self._source_report())
        return history, True

    def _note_source(self, report: SourceReport) -> None:
        """Count and show the poll's scoped issues; publish and announce how deep history is."""
        current: dict[str, str] = {}
        for issue in report.issues:
            key = f"history-query:{issue.query}"
            problem = f"history query skipped in part: {issue.message}"
            if self._problems.get(key) != problem:
                log.error(problem, kind=issue.kind)
            current[key] = problem
            self.metrics.history_errors.labels(kind=issue.kind).inc()
        for key in [k for k in self._problems if k.startswith("history-query:")]:
            if key not in current:
                del self._problems[key]
        self._problems.update(current)
        self.metrics.history_window_seconds.set(report.window_s)
        for model, seconds in report.history_s.items():
            self.metrics.history_seconds.labels(model=model).set(seconds)
        if report.short and report.available_s is not None:
            days = report.available_s / 86400
            window_days = report.window_s / 86400
            note = (
                f"history: the source holds {days:.1f} d of the {window_days:.1f} d window "
                "(forecaster.history_window_s); forecasting with what exists (a longer "
                "Prometheus retention, or time, fills it)"
            )
            if not self._short_history_logged:
                log.warning(note, available_s=report.available_s, window_s=report.window_s)
                self._short_history_logged = True
            self._problems["history-depth"] = note
        else:
            self._problems.pop("history-depth", None)

    async def _load_control(self) -> ControlState | None:
        """The stored manual state; None (the last one stays in force) when unreadable."""
        if self._control_state is None:
            return None
        try:
            return await self._control_state()
        except (PrewarmError, OSError) as error:
            log.warning("control state unavailable; keeping the last one", error=str(error))
            return None

    async def _apply(self, plan: WarmPlan) -> list[ActionResult]:
        if self._applier is None or not self.is_leader():
            return []  # a follower only forecasts and plans; the leader acts
        dry_run = self.config.mode != "active"  # advisory: the API server validates, stores nothing
        try:
            outcomes = list(await self._applier.apply(plan, dry_run=dry_run))
        except (PrewarmError, OSError) as error:
            log.warning("applying the plan failed; retrying next tick", error=str(error))
            self._publisher.failed(plan.actions)
            return []
        self._publisher.outcomes(outcomes)
        return outcomes

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, wait_s: float | None = None) -> None:
        """Tick every ``tick_s`` until ``stop`` is set. On stop, the tick in flight gets
        ``shutdown_grace_s`` to finish, then is cancelled.

        ``wait_s``: the process's own (wall) seconds between ticks, when its clock runs faster
        than the wall clock (``prewarm up --speed``: ``tick_s / speed``); default ``tick_s``.
        """
        pause_s = self.config.tick_s if wait_s is None else wait_s
        while not stop.is_set():
            tick = asyncio.ensure_future(self.tick())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({tick, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not tick.done():
                log.info("stop requested; finishing the tick", grace_s=self.config.shutdown_grace_s)
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(tick, timeout=self.config.shutdown_grace_s)
            stopper.cancel()
            if tick.done() and not tick.cancelled() and tick.exception() is not None:
                error = tick.exception()
                log.error("tick failed", error=repr(error))
                self.metrics.ticks.labels(result="error").inc()
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause_s)
