"""Settings of the forecaster and its history sources (a section of prewarm's settings tree)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class PrometheusSourceConfig(BaseModel):
    """Where and how to read request-rate history from Prometheus."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="http://prometheus:9090", description="Prometheus base URL.")
    query: str = Field(
        default="sum by (model) (rate(inference_requests_total[1m]))",
        description="PromQL returning one series per model, in requests per second.",
    )
    model_label: str = Field(default="model", description="Label that carries the model id.")
    step_s: int = Field(default=60, ge=1, description="Query resolution in seconds.")
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    retries: int = Field(default=3, ge=0, description="Retries per request, with backoff.")
    backoff_initial_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles per retry (with jitter)."
    )
    backoff_max_s: float = Field(default=10.0, ge=0, description="Longest retry delay.")
    max_points_per_query: int = Field(
        default=10_000,
        ge=2,
        le=11_000,
        description="Points per series in one range query (Prometheus refuses more than 11,000).",
    )
    bearer_token: SecretStr | None = Field(default=None, description="Sent as Authorization.")


class ForecasterConfig(BaseModel):
    """How forecasts are made."""

    model_config = ConfigDict(extra="forbid")

    history_window_s: int = Field(
        default=14 * 86400, gt=0, description="History kept in memory per model."
    )
    horizon_s: int = Field(default=1800, gt=0, description="How far ahead to forecast.")
    planning_quantile: float = Field(
        default=0.9, gt=0, lt=1, description="The quantile the planner sizes for."
    )
    prometheus: PrometheusSourceConfig = Field(default_factory=PrometheusSourceConfig)
