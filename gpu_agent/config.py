"""Settings of the GPU agent (a section of prewarm's settings tree).

Owns the validated shape of the agent's configuration: where the tiers live, what sources are
allowed, how copies are chunked, how memory is protected and how callers authenticate. It must not
read the environment or files itself; ``prewarm.settings`` composes it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MIB = 1024**2
GIB = 1024**3

Scheme = Literal["file", "http", "https"]


def _default_schemes() -> list[Scheme]:
    return ["file", "https"]


class AuthConfig(BaseModel):
    """How callers authenticate: a bearer token (the default), mutual TLS, or nothing.

    Whether a token is present is checked when the agent starts (:mod:`gpu_agent.startup`), not
    here: the settings tree is shared with the daemon, which never serves the agent.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "token", "mtls"] = Field(
        default="token",
        description=(
            "token (Authorization: Bearer, from auth.token or auth.token_file), mtls, or none "
            "(anyone who reaches the port may preload, evict and attach, so the agent then "
            "listens on loopback only: agent.listen must be a loopback address, or unset)."
        ),
    )
    token: SecretStr | None = Field(default=None, description="Bearer token (mode=token).")
    token_file: str | None = Field(
        default=None,
        description=(
            "A file (Kubernetes Secret mount) holding the bearer token instead of auth.token; "
            "re-read when it changes, so a rotated Secret is used without a restart."
        ),
    )
    tls_cert_file: str | None = Field(default=None, description="Server certificate (PEM).")
    tls_key_file: str | None = Field(default=None, description="Server private key (PEM).")
    client_ca_file: str | None = Field(
        default=None, description="CA that signs client certificates (mode=mtls)."
    )

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set auth.token or auth.token_file, not both")
        if self.mode == "mtls" and not (
            self.tls_cert_file and self.tls_key_file and self.client_ca_file
        ):
            raise ValueError(
                "auth.mode=mtls needs auth.tls_cert_file, auth.tls_key_file and auth.client_ca_file"
            )
        return self


# --------------------------------------------------------------------------- remote sources


def _default_hf_redirect_hosts() -> list[str]:
    # Where the Hub's /resolve/ URLs redirect LFS and Xet files today: its CloudFront CDNs
    # (cdn-lfs*.hf.co) and the Xet bridge (cas-bridge.xethub.hf.co). The bearer token is never
    # sent to any of them (see gpu_agent.remote.http).
    return ["*.hf.co", "*.huggingface.co"]


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/(\*|[A-Za-z0-9][A-Za-z0-9._-]*)$")
_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_HEADER_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


def _check_hosts(hosts: list[str], setting: str) -> list[str]:
    for host in hosts:
        if not _HOST.match(host):
            raise ValueError(
                f"{setting}: {host!r} is not a host name (host, host:port or *.domain)"
            )
    return hosts


def _check_endpoint(endpoint: str | None, setting: str) -> str | None:
    if endpoint is None:
        return None
    if not re.match(r"^https?://[^/?#]+/?$", endpoint):
        raise ValueError(
            f"{setting} must be a scheme and host with no path, e.g. https://minio.corp:9000; "
            f"got {endpoint!r}"
        )
    return endpoint.rstrip("/")


class S3SourcesConfig(BaseModel):
    """``s3://bucket/key`` sources: which buckets, where the server is, where credentials are."""

    model_config = ConfigDict(extra="forbid")

    allowed_buckets: list[str] = Field(
        default_factory=list,
        description=(
            "Buckets s3:// sources may name: 'bucket' (any key) or 'bucket/prefix' (keys starting "
            "with prefix). Empty (the default): s3:// is refused."
        ),
    )
    region: str = Field(default="us-east-1", min_length=1, description="Region signed for.")
    endpoint: str | None = Field(
        default=None,
        description=(
            "S3-compatible server (MinIO, Ceph RGW, ...), e.g. http://minio.storage:9000; "
            "path-style addressing is used when set. Null: AWS (virtual-hosted addressing)."
        ),
    )
    credentials_dir: str | None = Field(
        default=None,
        description=(
            "A directory mounted from a Kubernetes Secret with files AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN; read at each use. Null: the "
            "agent's environment variables of the same names, else web identity (see "
            "sts_endpoint)."
        ),
    )
    anonymous: bool = Field(
        default=False, description="Send unsigned requests (public buckets); no credentials read."
    )
    presign_expires_s: int = Field(
        default=3600,
        ge=60,
        le=7 * 24 * 3600,
        description="Lifetime of the presigned URLs a download uses (at most 7 days, SigV4's cap).",
    )
    sts_endpoint: str | None = Field(
        default=None,
        description=(
            "STS server for web identity (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE set, as "
            "EKS IRSA does). Null: remote.s3.endpoint when set (MinIO serves STS there), else "
            "the regional https://sts.<region>.amazonaws.com."
        ),
    )
    web_identity_duration_s: int = Field(
        default=3600,
        ge=900,
        le=12 * 3600,
        description=(
            "DurationSeconds asked of STS for web identity credentials (the role's maximum "
            "session duration caps it); they are exchanged again 5 minutes before they expire."
        ),
    )

    @field_validator("allowed_buckets")
    @classmethod
    def _buckets(cls, value: list[str]) -> list[str]:
        for entry in value:
            bucket, _, prefix = entry.partition("/")
            if not _BUCKET.match(bucket) or ".." in bucket:
                raise ValueError(
                    f"remote.s3.allowed_buckets: {entry!r} does not start with an S3 bucket name "
                    "(3-63 characters: lowercase letters, digits, '.' and '-')"
                )
            if ".." in prefix.split("/"):
                raise ValueError(f"remote.s3.allowed_buckets: {entry!r} contains '..'")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _check_endpoint(value, "remote.s3.endpoint")

    @field_validator("sts_endpoint")
    @classmethod
    def _sts_endpoint(cls, value: str | None) -> str | None:
        return _check_endpoint(value, "remote.s3.sts_endpoint")


class HfSourcesConfig(BaseModel):
    """``hf://org/name@revision`` sources (Hugging Face Hub model repositories, or a mirror)."""

    model_config = ConfigDict(extra="forbid")

    allowed_repos: list[str] = Field(
        default_factory=list,
        description=(
            "Model repositories hf:// sources may name: 'org/name', or 'org/*' for every "
            "repository of org. Empty (the default): hf:// is refused."
        ),
    )
    endpoint: str | None = Field(
        default=None,
        description="The Hub or a mirror. Null: the HF_ENDPOINT variable, else https://huggingface.co.",
    )
    token_file: str | None = Field(
        default=None,
        description=(
            "A file (Kubernetes Secret mount) holding the Hub token; read at each use. Null: the "
            "HF_TOKEN variable, else no token (public repositories only)."
        ),
    )
    require_pinned_revision: bool = Field(
        default=False,
        description=(
            "Refuse hf:// sources whose revision is not a 40-hex commit (a branch or tag moves; "
            "a pinned commit always names the same files)."
        ),
    )
    allowed_redirect_hosts: list[str] = Field(
        default_factory=_default_hf_redirect_hosts,
        description=(
            "Hosts a download may be redirected to (the Hub's CDNs): host, host:port or *.domain. "
            "The token is never sent to them."
        ),
    )

    @field_validator("allowed_repos")
    @classmethod
    def _repos(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _REPO.match(entry) or ".." in entry:
                raise ValueError(f"remote.hf.allowed_repos: {entry!r} is not 'org/name' or 'org/*'")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _check_endpoint(value, "remote.hf.endpoint")

    @field_validator("allowed_redirect_hosts")
    @classmethod
    def _redirects(cls, value: list[str]) -> list[str]:
        return _check_hosts(value, "remote.hf.allowed_redirect_hosts")


class HttpsSourcesConfig(BaseModel):
    """Extra settings of http(s):// sources (``allowed_http_prefixes`` says which URLs)."""

    model_config = ConfigDict(extra="forbid")

    header_files: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "host (or host:port) -> a file (Kubernetes Secret mount) of 'Name: value' lines, sent "
            "with requests to exactly that host; read at each use."
        ),
    )
    allowed_redirect_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts an http(s) download may be redirected to (host, host:port or *.domain). Empty: "
            "only redirects within the same scheme, host and port are followed. Headers from "
            "header_files are never sent to another host."
        ),
    )

    @field_validator("header_files")
    @classmethod
    def _header_hosts(cls, value: dict[str, str]) -> dict[str, str]:
        for host in value:
            if not _HEADER_HOST.match(host):
                raise ValueError(
                    f"remote.https.header_files: key {host!r} is not a host or host:port"
                )
        return value

    @field_validator("allowed_redirect_hosts")
    @classmethod
    def _redirects(cls, value: list[str]) -> list[str]:
        return _check_hosts(value, "remote.https.allowed_redirect_hosts")


class RemoteSourcesConfig(BaseModel):
    """Object-store, Hub and authenticated-https sources; everything is refused until configured."""

    model_config = ConfigDict(extra="forbid")

    s3: S3SourcesConfig = Field(default_factory=S3SourcesConfig)
    hf: HfSourcesConfig = Field(default_factory=HfSourcesConfig)
    https: HttpsSourcesConfig = Field(default_factory=HttpsSourcesConfig)


class AgentConfig(BaseModel):
    """How the GPU agent serves and where it keeps its tiers."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(
        default="0.0.0.0:50061",
        description="gRPC listen address (with auth.mode=none: loopback only; left at the "
        "default, 127.0.0.1 with the same port).",
    )
    metrics_port: int | None = Field(
        default=9400,
        ge=0,
        le=65535,
        description="Port of /metrics, /healthz and /readyz (0: any free port; null: off).",
    )
    cache_dir: str = Field(
        default="/var/cache/prewarm",
        description=(
            "Node-local disk cache: a directory of its own (not /, /tmp, /var/cache, a home "
            "directory, ...); start-up removes only the incomplete entries the agent marked."
        ),
    )
    shm_dir: str = Field(
        default="/dev/shm/prewarm",
        description=(
            "Host shared-memory tier: a directory of its own under the tmpfs (not /dev/shm "
            "itself); start-up removes only the entries the agent marked as its own."
        ),
    )
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
    yield_hold_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description=(
            "How long a YieldGpu without hold_s keeps GPU-tier Preloads off the yielded GPUs "
            "(long enough for an engine to start and take its share of GPU memory)."
        ),
    )
    yield_max_hold_s: float = Field(
        default=3600.0,
        gt=0,
        le=86_400,
        description="The longest hold_s a YieldGpu may ask for (longer is INVALID_ARGUMENT).",
    )
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    reflection: bool = Field(
        default=False,
        description=(
            "Serve gRPC server reflection (lists the agent's services; behind auth like the "
            "rest). Off: clients use the published gpu_agent.proto."
        ),
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    remote: RemoteSourcesConfig = Field(
        default_factory=RemoteSourcesConfig,
        description="s3://, hf:// and authenticated https:// sources (docs/sources.md).",
    )
