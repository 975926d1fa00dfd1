"""Settings of the planner (a section of prewarm's settings tree)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PlannerConfig(BaseModel):
    """Knobs of the warm planner."""

    model_config = ConfigDict(extra="forbid")

    catalog_path: str | None = Field(
        default=None, description="Model catalog YAML; models missing from it get defaults."
    )
    gpu_memory_budget_bytes: int | None = Field(
        default=None, ge=0, description="Global cap on GPU bytes prewarm may hold; none = no cap."
    )
