"""What one decision cycle is configured with: the gate, the per-tick caps and the fixed inputs.

Owns: the settings sections the cycle reads (:class:`BudgetConfig`, :class:`QualityGateConfig`,
sections of the daemon's settings tree) and :class:`CycleConfig`, the one value a driver (the
daemon, the simulator) builds once and passes to every :func:`prewarm.cycle.step.step`. Must not:
read files, the environment or the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from planner.catalog import Catalog
from planner.config import PlannerConfig


class BudgetConfig(BaseModel):
    """Per-tick caps on what one tick may start; actions over a cap wait for a later tick."""

    model_config = ConfigDict(extra="forbid")

    max_nodes_added: int = Field(default=4, ge=0, description="Placeholder GPUs added per tick.")
    max_prepulls: int = Field(default=8, ge=0, description="Image pre-pulls started per tick.")
    max_gpu_bytes: int = Field(
        default=200 * 1024**3,
        ge=0,
        description=(
            "Bytes of new GPU preloads requested per tick (one standing from the last tick "
            "does not count)."
        ),
    )


class QualityGateConfig(BaseModel):
    """When a model's live forecast is too poor to act on, it falls back to reactive handling."""

    model_config = ConfigDict(extra="forbid")

    window_steps: int = Field(default=120, ge=5, description="Steps of live error history used.")
    min_steps: int = Field(default=30, ge=1, description="Steps observed before the gate judges.")
    max_error_ratio: float = Field(
        default=1.0,
        gt=0,
        description="Mean |actual - forecast| / mean actual above which to fall back.",
    )
    max_under_forecast_ratio: float = Field(
        default=0.3, gt=0, le=1, description="Share of steps above the planning quantile allowed."
    )


DEFAULT_TICK_S = 15.0
"""The daemon's default seconds between cycles (``daemon.tick_s``); the per-tick caps are sized
for it."""

DEFAULT_AUTOSCALER_COOLDOWN_S = 300.0
"""KEDA's default ``cooldownPeriod``: how long a reactive autoscaler keeps a model's last
replica after its last request."""


@dataclass(frozen=True, slots=True)
class CycleConfig:
    """The fixed inputs of every cycle.

    - ``interval_s``: seconds until the next cycle (the daemon's tick); the planner plans for
      ``[now, now + interval + lead]``;
    - ``step_s``: the history's step (the forecast grid);
    - ``planning_quantile``: the forecast level the gate scores under-forecasts against;
    - ``autoscaler_cooldown_s``: the reactive autoscaler's scale-to-zero wait, for counting cold
      starts avoided.
    """

    planner: PlannerConfig
    catalog: Catalog
    interval_s: float
    step_s: float
    planning_quantile: float
    quality_gate: QualityGateConfig = field(default_factory=QualityGateConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    autoscaler_cooldown_s: float = DEFAULT_AUTOSCALER_COOLDOWN_S
