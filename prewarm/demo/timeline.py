"""One spike's timeline in the demo: forecast, actual, Preload, weights resident, and the start it
saved against the reactive policy.

Owns: recording, tick by tick, what the live daemon and the real agents did for each shown model
(:class:`TimelineRecorder`), and the start times on both sides of the spike:

- the *reactive* scale-up: what a reactive autoscaler (HPA, KEDA) starts when the spike arrives, a
  new replica: container start, image pull, weights from the source, cold compile, on a node with
  a free GPU (a new node adds the node stage). A model idle before the spike waits that long for
  its first request; a model with replicas up queues its spike on them meanwhile;
- *prewarm*'s wait for that replica: nothing when the replica floor was raised early enough;
  else the start from the tier the agents held the weights in at the spike.

Both are summed from the stage figures the planner plans with (``prewarm explain``). Times are on
the trace's clock. Must not: decide anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from common.ids import ModelId, NodeName
from common.tiers import Tier
from forecaster.types import Forecast
from planner.actions import Evict, Preload, ReplicaFloor
from planner.observed import ClusterSnapshot
from prewarm.daemon.loop import TickReport
from prewarm.demo.cluster import LocalAgentsObserver
from prewarm.demo.spikes import Spike

FORECAST_AHEAD_S = 1800.0
"""The timeline's forecast for a step is the one made this long before the step."""


@dataclass(slots=True)
class ForecastPoint:
    """The forecast made ``FORECAST_AHEAD_S`` before a step, for that step (requests per step)."""

    step_s: float
    p10: float
    p50: float
    p90: float


@dataclass(slots=True)
class ModelTimeline:
    """What happened for one shown model around its spike (trace clock, seconds)."""

    model: ModelId
    onset_s: float
    spike_requests: float
    peak: float
    first_step: float
    """Requests in the spike's first step."""
    forecasts: list[ForecastPoint] = field(default_factory=list)
    preload_issued_s: float | None = None
    preload_node: NodeName | None = None
    preload_tier: str = ""
    resident_s: float | None = None
    load_s: float | None = None
    loaded_bytes: int = 0
    floor_raised_s: float | None = None
    evicted_s: list[float] = field(default_factory=list)
    stages_s: dict[str, float] = field(default_factory=dict)
    tier_at_onset: Tier = Tier.REMOTE
    floor_at_onset: int = 0
    _issued_wall_s: float = 0.0

    @property
    def reactive_start_s(self) -> float:
        """Seconds a reactive autoscaler's new replica takes from the spike's start."""
        stages = self.stages_s
        return sum(stages.get(n, 0.0) for n in ("container", "image", "weights_remote")) + (
            stages.get("compile_cold", 0.0)
        )

    @property
    def prewarm_wait_s(self) -> float:
        """Seconds from the spike's start until prewarm's replica for it is ready."""
        stages = self.stages_s
        from_host = stages.get("container", 0.0) + stages.get("weights_host", 0.0)
        from_host += stages.get("compile_cached", 0.0)
        if self.floor_at_onset > 0 and self.floor_raised_s is not None:
            ready_s = self.floor_raised_s + (
                from_host if self.tier_at_onset >= Tier.HOST else self.reactive_start_s
            )
            return max(0.0, ready_s - self.onset_s)
        if self.tier_at_onset >= Tier.HOST:
            return from_host
        return self.reactive_start_s

    @property
    def saved_s(self) -> float:
        """Seconds earlier than the reactive autoscaler's that the spike's replica was ready."""
        return max(0.0, self.reactive_start_s - self.prewarm_wait_s)

    def document(self) -> dict[str, Any]:
        """The JSON form (report.json)."""
        return {
            "model": self.model,
            "spike_onset_s": self.onset_s,
            "spike_requests": self.spike_requests,
            "spike_peak_per_step": self.peak,
            "spike_first_step": self.first_step,
            "preload_issued_s": self.preload_issued_s,
            "preload_node": self.preload_node,
            "preload_tier": self.preload_tier,
            "weights_resident_s": self.resident_s,
            "agent_load_s": self.load_s,
            "agent_loaded_bytes": self.loaded_bytes,
            "replica_floor_raised_s": self.floor_raised_s,
            "evicted_s": self.evicted_s,
            "tier_at_onset": self.tier_at_onset.label,
            "stages_s": self.stages_s,
            "reactive_start_s": self.reactive_start_s,
            "prewarm_wait_s": self.prewarm_wait_s,
            "saved_s": self.saved_s,
        }


class TimelineRecorder:
    """Follows the shown models through a live run.

    ``shift_s`` is the live clock minus the trace's clock (the replay runs on wall time).
    """

    def __init__(
        self,
        spikes: tuple[Spike, ...],
        *,
        start_s: float,
        step_s: float,
        tick_s: float,
        shift_s: float,
    ) -> None:
        self._step_s = step_s
        self._tick_s = tick_s
        self._shift_s = shift_s
        self._ahead = max(1, math.ceil(FORECAST_AHEAD_S / step_s))
        self._last_origin = -math.inf
        self.timelines = {
            s.model: ModelTimeline(
                model=s.model,
                onset_s=start_s + s.onset * step_s,
                spike_requests=s.requests,
                peak=s.peak,
                first_step=s.first_step,
            )
            for s in spikes
        }

    def record(
        self,
        *,
        now_s: float,
        wall_s: float,
        report: TickReport,
        forecasts: dict[ModelId, Forecast],
        snapshot: ClusterSnapshot | None,
        observer: LocalAgentsObserver,
    ) -> None:
        """One tick: the live clock ``now_s`` (the tick's), the wall time it started at, what the
        cycle applied, its forecasts and the snapshot it planned from."""
        now = now_s - self._shift_s
        self._record_forecasts(now, forecasts)
        for line in self.timelines.values():
            if now <= line.onset_s:
                self._record_actions(line, now, wall_s, report)
                self._record_resident(line, observer)
            if snapshot is not None and now <= line.onset_s < now + self._tick_s:
                state = snapshot.models.get(line.model)
                line.tier_at_onset = state.tier if state is not None else Tier.REMOTE
                line.floor_at_onset = state.ready_replicas if state is not None else 0

    def _record_forecasts(self, now: float, forecasts: dict[ModelId, Forecast]) -> None:
        origin = math.floor(now / self._step_s) * self._step_s  # end of the last complete step
        if origin <= self._last_origin:
            return
        self._last_origin = origin
        for line in self.timelines.values():
            forecast = forecasts.get(line.model)
            if forecast is None or forecast.horizon < self._ahead:
                continue
            k = self._ahead - 1
            line.forecasts.append(
                ForecastPoint(
                    step_s=origin + k * self._step_s,
                    p10=float(forecast.quantile(0.1)[k]),
                    p50=float(forecast.quantile(0.5)[k]),
                    p90=float(forecast.quantile(forecast.quantiles[-1])[k]),
                )
            )

    @staticmethod
    def _record_actions(line: ModelTimeline, now: float, wall_s: float, report: TickReport) -> None:
        for outcome in report.applied:
            action = outcome.action
            if getattr(action, "model", None) != line.model:
                continue
            if isinstance(action, ReplicaFloor):
                if action.min_replicas > 0 and line.floor_raised_s is None:
                    line.floor_raised_s = now
                elif action.min_replicas == 0:
                    line.floor_raised_s = None
            if outcome.result != "ok":
                continue
            if isinstance(action, Preload) and line.preload_issued_s is None:
                line.preload_issued_s = now
                line.preload_node = action.node
                line.preload_tier = action.tier.label
                line._issued_wall_s = wall_s
                line.resident_s = None
            elif isinstance(action, Evict) and action.node == line.preload_node:
                line.evicted_s.append(now)
                line.preload_issued_s = line.preload_node = line.resident_s = None

    @staticmethod
    def _record_resident(line: ModelTimeline, observer: LocalAgentsObserver) -> None:
        if line.preload_issued_s is None or line.resident_s is not None or not line.preload_node:
            return
        view = observer.views.get(line.preload_node)
        if view is None or view.status is None:
            return
        for holding in view.status.models:
            if holding.model_id == line.model and holding.HasField("loaded_at"):
                loaded_wall_s = holding.loaded_at.ToNanoseconds() / 1e9
                line.resident_s = line.preload_issued_s + max(
                    0.0, loaded_wall_s - line._issued_wall_s
                )
                line.load_s = holding.load_duration_s
                line.loaded_bytes = holding.loaded_bytes
