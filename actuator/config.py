"""Settings of the actuator (a section of prewarm's settings tree)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ActuatorConfig(BaseModel):
    """How plans are applied to the cluster."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(default="prewarm", description="Namespace for prewarm-owned objects.")
    field_manager: str = Field(default="prewarm", description="Server-side apply field manager.")
    dry_run: bool = Field(default=False, description="Send every write with dryRun=All.")
