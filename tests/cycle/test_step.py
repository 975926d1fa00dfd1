"""The decision cycle through its public interface: inputs and state in, plan, state, report out."""

from __future__ import annotations

import numpy as np

from common.ids import ModelId, NodeName, PoolName
from forecaster.engine import AutoForecaster
from forecaster.types import Forecast, SeriesBatch
from planner.actions import Preload, ReplicaFloor, Tier
from planner.catalog import Catalog
from planner.config import PlannerConfig
from planner.leadtime import Stage, StageObservation
from planner.planner import ModelState, NodeState, PoolState
from prewarm.control.view import explain_published
from prewarm.cycle.config import BudgetConfig, CycleConfig, QualityGateConfig
from prewarm.cycle.forecasting import ForecastFeed
from prewarm.cycle.interfaces import ClusterSnapshot
from prewarm.cycle.manual import ControlState, Pause
from prewarm.cycle.step import CycleInputs, CycleResult, CycleState, step

STEP = 60.0
DAY = 1440
TIMER = ModelId("timer")
POOL = PoolName("gpu")


def _config(**changes: object) -> CycleConfig:
    fields: dict[str, object] = {
        "planner": PlannerConfig(),
        "catalog": Catalog(),
        "interval_s": 60.0,
        "step_s": STEP,
        "planning_quantile": 0.9,
    }
    fields.update(changes)
    return CycleConfig(**fields)  # type: ignore[arg-type]


def _snapshot(**models: ModelState) -> ClusterSnapshot:
    """The pool with one node whose agent answered, holding the running models in GPU memory."""
    running = {ModelId(m) for m, s in models.items() if s.current_replicas > 0}
    node = NodeState(
        name=NodeName("gpu-0"),
        pool=POOL,
        free_gpu_bytes=10**13,
        holdings=dict.fromkeys(running, Tier.GPU),
        running=frozenset(running),
    )
    return ClusterSnapshot(
        models={ModelId(m): s for m, s in models.items()},
        pools={POOL: PoolState(pool=POOL, free_gpus=8)},
        nodes=(node,),
    )


def _timer(days: int = 1) -> SeriesBatch:
    counts = np.zeros((1, days * DAY))
    counts[0, ::10] = 1.0
    return SeriesBatch(models=(TIMER,), start_s=0.0, step_s=STEP, counts=counts)


def _first_cycle(history: SeriesBatch, config: CycleConfig, now_s: float) -> CycleResult:
    feed = ForecastFeed(AutoForecaster(STEP), step_s=STEP, horizon_s=1800, planning_quantile=0.9)
    forecasts = feed.refresh(history)
    inputs = CycleInputs(now_s=now_s, forecasts=forecasts, snapshot=_snapshot(), history=history)
    return step(inputs, CycleState.initial(config), config)


def test_an_idle_models_last_request_reaches_the_planners_calibration() -> None:
    # The idle timer's P is recorded for calibration only with the time of its latest request
    # (the end of the last history step with one) and the gaps of its idle-time record.
    history = _timer()
    now = (DAY - 10 + 1) * STEP + 7 * STEP
    result = _first_cycle(history, _config(), now)
    pending = result.state.planner.calibration.pending
    assert [batch.models for batch in pending] == [(TIMER,)]
    thin = pending[0].contexts[0] % 2
    assert thin == 0  # the record holds enough gaps


def test_a_gated_models_forecast_is_published_but_does_not_reach_the_planner() -> None:
    config = _config(quality_gate=QualityGateConfig(min_steps=1, max_error_ratio=1e-9))
    feed = ForecastFeed(AutoForecaster(STEP), step_s=STEP, horizon_s=1800, planning_quantile=0.9)
    history = _timer()
    history.counts[0, -1] = 50.0  # a burst nothing forecast
    state = CycleState.initial(config)
    now = history.end_s
    # Two cycles a step apart: the first forecast is scored against the next step.
    first = history.counts[:, :-1]
    batches = [
        SeriesBatch(models=(TIMER,), start_s=0.0, step_s=STEP, counts=first),
        SeriesBatch(
            models=(TIMER,), start_s=now - STEP, step_s=STEP, counts=history.counts[:, -1:]
        ),
    ]
    reports = []
    for at, batch in zip((now - STEP, now), batches, strict=True):
        forecasts = feed.refresh(batch)
        result = step(
            CycleInputs(now_s=at, forecasts=forecasts, snapshot=_snapshot(), history=batch),
            state,
            config,
        )
        state = result.state
        reports.append(result.report)
    assert TIMER in reports[-1].gated
    assert TIMER in reports[-1].forecasts  # KEDA and explain see it, marked gated
    assert reports[-1].quality[TIMER].steps == 1
    # The daemon's warning and the demo say which limit the forecast broke.
    reason = reports[-1].fallback_reasons[TIMER]
    assert reason.startswith("forecast error ")
    assert "(limit 0.00x)" in reason
    assert reason.endswith("over the last 1 steps")


def test_a_paused_model_keeps_the_actions_it_had() -> None:
    config = _config()
    history = _timer()
    now = (DAY - 10 + 1) * STEP + 7 * STEP
    feed = ForecastFeed(AutoForecaster(STEP), step_s=STEP, horizon_s=1800, planning_quantile=0.9)
    forecasts = feed.refresh(history)
    busy = _snapshot(timer=ModelState(model=TIMER, ready_replicas=1, observed_rps=1.0))
    first = step(
        CycleInputs(now_s=now, forecasts=forecasts, snapshot=busy, history=history),
        CycleState.initial(config),
        config,
    )
    held = [a for a in first.plan.actions if getattr(a, "model", None) == TIMER]
    assert held
    paused = ControlState(pauses=(Pause(model=TIMER, created_s=now, created_by="test"),))
    later = step(
        CycleInputs(
            now_s=now + 3 * 3600, forecasts=forecasts, snapshot=_snapshot(), control=paused
        ),
        first.state,
        config,
    )
    assert [a for a in later.plan.actions if getattr(a, "model", None) == TIMER] == held
    assert later.report.overrides.is_paused(TIMER)


def test_lead_times_are_learned_from_observed_stage_durations_only() -> None:
    config = _config(planner=PlannerConfig(lead_min_samples=3))
    observations = tuple(StageObservation(Stage.NODE, "gpu", 600.0) for _ in range(3))
    snapshot = ClusterSnapshot(
        models={}, pools={POOL: PoolState(pool=POOL, free_gpus=0)}, stage_observations=observations
    )
    state = CycleState.initial(config)
    before = state.planner.lead.seconds(Stage.NODE, "gpu", -1.0)
    result = step(CycleInputs(now_s=0.0, forecasts={}, snapshot=snapshot), state, config)
    assert before == -1.0
    assert result.report.lead.seconds(Stage.NODE, "gpu", -1.0) == 600.0


def test_a_gpu_preload_applied_last_cycle_does_not_count_against_the_bytes_cap() -> None:
    # The cap limits what one cycle adds; repeating a standing preload adds nothing.
    config = _config(budget=BudgetConfig(max_gpu_bytes=1))
    history = _timer()
    now = (DAY - 10 + 1) * STEP + 7 * STEP
    feed = ForecastFeed(AutoForecaster(STEP), step_s=STEP, horizon_s=1800, planning_quantile=0.9)
    forecasts: dict[ModelId, Forecast] = dict(feed.refresh(history))
    state = CycleState.initial(config)
    state.gpu_preloaded = frozenset({TIMER})
    busy = _snapshot(timer=ModelState(model=TIMER, ready_replicas=1, observed_rps=1.0))
    result = step(
        CycleInputs(now_s=now, forecasts=forecasts, snapshot=busy, history=history), state, config
    )
    preloads = [a for a in result.plan.actions if isinstance(a, Preload) and a.tier is Tier.GPU]
    assert [p.model for p in preloads] == [TIMER]
    assert not result.report.deferred
    assert any(isinstance(a, ReplicaFloor) for a in result.plan.actions)


def test_explain_shows_each_stages_figure_and_the_observations_it_rests_on() -> None:
    config = _config(planner=PlannerConfig(lead_min_samples=3))
    observations = tuple(StageObservation(Stage.NODE, "gpu", 600.0) for _ in range(3))
    snapshot = ClusterSnapshot(
        models={}, pools={POOL: PoolState(pool=POOL, free_gpus=0)}, stage_observations=observations
    )
    result = step(
        CycleInputs(now_s=0.0, forecasts={}, snapshot=snapshot),
        CycleState.initial(config),
        config,
    )
    explanation = explain_published(TIMER, result.report, forecast=None, config=config)
    assert explanation.lead_times_s["node"] == 600.0
    assert explanation.lead_observations["node"] == 3
    defaults = config.planner.stages
    assert explanation.lead_times_s["container"] == defaults.container_start_s
    assert explanation.lead_observations["weights_host"] == 0  # the catalog's figure stands
