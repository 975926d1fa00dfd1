"""Settings of the GPU agent (a section of prewarm's settings tree).

Owns the validated shape of the agent's configuration: where the tiers live, what sources are
allowed, how copies are chunked, how memory is protected and how callers authenticate. It must not
read the environment or files itself; ``prewarm.settings`` composes it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

MIB = 1024**2
GIB = 1024**3

Scheme = Literal["file", "http", "https"]


def _default_schemes() -> list[Scheme]:
    return ["file", "https"]


class AuthConfig(BaseModel):
    """How callers authenticate: nothing (loopback/dev), a bearer token, or mutual TLS."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "token", "mtls"] = Field(
        default="none", description="none, token (Authorization: Bearer) or mtls."
    )
    token: SecretStr | None = Field(default=None, description="Bearer token (mode=token).")
    tls_cert_file: str | None = Field(default=None, description="Server certificate (PEM).")
    tls_key_file: str | None = Field(default=None, description="Server private key (PEM).")
    client_ca_file: str | None = Field(
        default=None, description="CA that signs client certificates (mode=mtls)."
    )

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.mode == "token" and (self.token is None or not self.token.get_secret_value()):
            raise ValueError("auth.mode=token needs auth.token (PREWARM_AGENT__AUTH__TOKEN)")
        if self.mode == "mtls" and not (
            self.tls_cert_file and self.tls_key_file and self.client_ca_file
        ):
            raise ValueError(
                "auth.mode=mtls needs auth.tls_cert_file, auth.tls_key_file and auth.client_ca_file"
            )
        return self


class AgentConfig(BaseModel):
    """How the GPU agent serves and where it keeps its tiers."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(default="0.0.0.0:50061", description="gRPC listen address.")
    metrics_port: int | None = Field(
        default=9400,
        ge=0,
        le=65535,
        description="Port of /metrics, /healthz and /readyz (0: any free port; null: off).",
    )
    cache_dir: str = Field(default="/var/cache/prewarm", description="Node-local disk cache.")
    shm_dir: str = Field(default="/dev/shm/prewarm", description="Host shared-memory tier.")
    headroom_bytes: int = Field(
        default=2 * GIB, ge=0, description="GPU memory always left free for inference pods."
    )
    host_headroom_bytes: int = Field(
        default=4 * GIB, ge=0, description="Shared memory (/dev/shm) always left free."
    )
    host_max_bytes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Most bytes the host tier may hold (null: as much as shm_dir has beyond "
            "host_headroom_bytes). Beyond it, lower-valued models are evicted to make room."
        ),
    )
    disk_headroom_bytes: int = Field(
        default=10 * GIB, ge=0, description="Disk space of cache_dir always left free."
    )
    allowed_schemes: list[Scheme] = Field(
        default_factory=_default_schemes, description="URI schemes Preload may fetch."
    )
    allowed_file_roots: list[str] = Field(
        default_factory=lambda: ["/models"],
        description="Directories file:// sources must lie under (after resolving links).",
    )
    allowed_http_prefixes: list[str] = Field(
        default_factory=list,
        description="URL prefixes http(s):// sources must start with (e.g. https://models.corp/).",
    )
    allowed_install_roots: list[str] = Field(
        default_factory=lambda: ["/var/cache/prewarm-compile"],
        description="Directories compiled artifacts may be installed under.",
    )
    require_sha256: bool = Field(default=True, description="Refuse sources without a sha256.")
    allow_pickle: bool = Field(
        default=False,
        description="Allow pickle weights (.bin/.pt) when a request asks; loaded weights_only.",
    )
    max_model_id_len: int = Field(default=256, ge=1, le=4096)
    chunk_bytes: int = Field(default=64 * MIB, ge=MIB, description="Pinned staging chunk size.")
    copy_workers: int = Field(
        default=8, ge=1, le=64, description="Reader threads / CUDA streams for host->GPU fills."
    )
    host_fill: Literal["staged", "registered"] = Field(
        default="registered",
        description=(
            "GPU fills from host shared memory: registered (cudaHostRegister the shm mapping, DMA "
            "straight from it) or staged (copy through pinned staging buffers)."
        ),
    )
    http_parallel_ranges: int = Field(default=8, ge=1, le=64)
    http_range_bytes: int = Field(default=64 * MIB, ge=MIB)
    http_timeout_s: float = Field(default=30.0, gt=0)
    pressure_poll_interval_s: float = Field(
        default=0.1, gt=0, le=0.5, description="How often NVML is read for memory pressure."
    )
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    auth: AuthConfig = Field(default_factory=AuthConfig)
