"""Settings of the GPU agent (a section of prewarm's settings tree)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AgentConfig(BaseModel):
    """How the GPU agent serves and where it keeps its tiers."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(default="0.0.0.0:50061", description="gRPC listen address.")
    cache_dir: str = Field(default="/var/cache/prewarm", description="Node-local disk cache.")
    shm_dir: str = Field(default="/dev/shm/prewarm", description="Host shared-memory tier.")
    headroom_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="GPU memory always left free for inference pods."
    )
