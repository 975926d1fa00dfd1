"""Settings of the planner (a section of prewarm's settings tree)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StageDefaults(BaseModel):
    """Stage costs used until enough durations have been observed to learn them."""

    model_config = ConfigDict(extra="forbid")

    node_provision_s: float = Field(
        default=240.0, gt=0, description="A new GPU node, from request to schedulable."
    )
    container_start_s: float = Field(default=5.0, ge=0, description="Container start.")
    image_pull_gbps: float = Field(default=0.2, gt=0, description="Image pull and extract, GB/s.")
    remote_gbps: float = Field(default=1.0, gt=0, description="Remote storage -> node, GB/s.")
    disk_gbps: float = Field(default=2.5, gt=0, description="Node disk -> host memory, GB/s.")
    host_to_gpu_gbps: float = Field(default=20.0, gt=0, description="Host -> GPU memory, GB/s.")
    compile_cached_fraction: float = Field(
        default=0.25, ge=0, le=1, description="Share of compile_s paid with a warm compile cache."
    )


class PlannerConfig(BaseModel):
    """Knobs of the warm planner."""

    model_config = ConfigDict(extra="forbid")

    catalog_path: str | None = Field(
        default=None, description="Model catalog YAML; models missing from it get defaults."
    )
    gpu_memory_budget_bytes: int | None = Field(
        default=None, ge=0, description="Global cap on GPU bytes prewarm may hold; none = no cap."
    )
    replica_quantile: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description=(
            "Forecast quantile replica counts are sized for; the reactive autoscaler adds what "
            "observed load needs above it (a higher quantile holds more idle replicas for shorter "
            "queues)."
        ),
    )
    target_utilization: float = Field(
        default=0.8, gt=0, le=1, description="Share of replica_rps a replica is planned to carry."
    )
    min_value_density: float = Field(
        default=0.0005,
        ge=0,
        description=(
            "Least value density (P(request in the planning window) x requests a cold start "
            "would delay / GB) for which an idle model is held warm in GPU memory, whatever "
            "idle_price says; lower holds more memory for fewer cold starts."
        ),
    )
    idle_price: float = Field(
        default=0.0004,
        ge=0,
        description=(
            "Price of idle GPU memory for warm holds, relative to the fleet: an idle model is "
            "held when the requests a cold start would delay per GB reach idle_price x the "
            "fleet's requests per second per GB the reactive autoscaler leaves idle x the "
            "planning window, where each wake-up of an idle model counts as at least 100 "
            "requests (so a fleet of rarely called models is priced too). 0 turns the price "
            "off (min_value_density alone decides). The "
            "default is measured with an autoscaler that keeps a model's last replica 5 minutes "
            "(KEDA's default cooldownPeriod); with a much shorter cooldown it leaves little "
            "memory idle, the price rises and the same value holds far less: lower it."
        ),
    )
    calibrate_p: bool = Field(
        default=True,
        description=(
            "Calibrate P(request within the planning window) of idle models against the outcomes "
            "of the planner's past predictions (planner.calibration)."
        ),
    )
    host_min_value_density: float = Field(
        default=0.0,
        ge=0,
        description=(
            "The same threshold for holding weights in host memory (P x seconds saved vs disk / "
            "GB); 0 fills host memory while it has room."
        ),
    )
    hysteresis: float = Field(
        default=0.3,
        ge=0,
        description="A held model's value density counts this much higher (avoids thrashing).",
    )
    scale_down_after_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "Replicas the planner added go down only after forecast and observation agreed this "
            "long. Short: the reactive autoscaler keeps its own scale-down window (HPA: 5 "
            "minutes) under the floor, so a long wait here only stacks a second one on it."
        ),
    )
    lead_quantile: float = Field(
        default=0.9, gt=0, lt=1, description="Quantile of observed stage durations planned for."
    )
    lead_min_samples: int = Field(
        default=3, ge=1, description="Observations of a stage before they replace the default."
    )
    host_memory_budget_bytes: int | None = Field(
        default=None, ge=0, description="Cap on host-memory bytes for weights; none = per pool."
    )
    stages: StageDefaults = Field(default_factory=StageDefaults)
