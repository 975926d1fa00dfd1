"""Settings of the daemon loop (a section of prewarm's settings tree)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prewarm.cycle.config import (
    DEFAULT_AUTOSCALER_COOLDOWN_S,
    DEFAULT_TICK_S,
    BudgetConfig,
    QualityGateConfig,
)


class LeaderElectionConfig(BaseModel):
    """The Lease that makes exactly one replica act."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    lease_name: str = "prewarm-leader"
    lease_duration_s: int = Field(default=15, ge=2)
    retry_period_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _retry_shorter_than_lease(self) -> LeaderElectionConfig:
        if self.retry_period_s >= self.lease_duration_s:
            raise ValueError(
                "retry_period_s must be shorter than lease_duration_s, or the lease expires "
                "between renewals"
            )
        return self


class DaemonConfig(BaseModel):
    """The daemon loop: tick, mode, budgets, quality gate, probes."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["advisory", "active"] = Field(
        default="advisory", description="advisory publishes plans only; active applies them."
    )
    tick_s: float = Field(default=DEFAULT_TICK_S, gt=0, description="Seconds between ticks.")
    shutdown_grace_s: float = Field(
        default=10.0, gt=0, description="On SIGTERM, time the current tick has to finish."
    )
    http_port: int = Field(default=8080, ge=0, le=65535, description="/healthz /readyz /metrics")
    forecast_horizons_s: tuple[int, ...] = Field(
        default=(0, 300, 900, 1800), description="Horizons published as prewarm_forecast_rps."
    )
    autoscaler_cooldown_s: float = Field(
        default=DEFAULT_AUTOSCALER_COOLDOWN_S,
        ge=0,
        description=(
            "Seconds your reactive autoscaler keeps a model's last replica after its last "
            "request (a KEDA ScaledObject's cooldownPeriod, 300 by default). A request that "
            "finds a warm replica after a longer silence counts as a cold start avoided."
        ),
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    quality_gate: QualityGateConfig = Field(default_factory=QualityGateConfig)
    leader_election: LeaderElectionConfig = Field(default_factory=LeaderElectionConfig)
