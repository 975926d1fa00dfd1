"""Settings of the forecaster and its history sources (a section of prewarm's settings tree)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from forecaster.demand import CUSTOM, check_preset_name

DEFAULT_QUERY = "sum by (model) (rate(inference_requests_total[1m]))"


class DemandQueryConfig(BaseModel):
    """One demand query of ``forecaster.prometheus.queries``: a preset or a free PromQL query."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(
        default=CUSTOM,
        description="vllm, sglang, tgi, triton, kserve, knative, istio, ingress-nginx, or custom "
        "(then `query` is required). See docs/demand.md.",
    )
    query: str | None = Field(
        default=None,
        description="custom only: PromQL returning one series per model in requests per second.",
    )
    model_label: str | None = Field(
        default=None, description="Label carrying the model id (null: the preset's own label)."
    )
    matchers: str = Field(
        default="",
        description='Extra label matchers added to a preset\'s selector, e.g. namespace="llm".',
    )
    zero_fill: bool | None = Field(
        default=None,
        description="Read an absent step of a model already seen as 0 requests (null: on for "
        "presets, off for custom).",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return check_preset_name(value)

    @model_validator(mode="after")
    def _query_for_custom_only(self) -> DemandQueryConfig:
        if self.preset == CUSTOM and not self.query:
            raise ValueError("a custom demand query needs `query` (PromQL, one series per model)")
        if self.preset != CUSTOM and self.query:
            raise ValueError(
                f"preset {self.preset!r} builds its own PromQL; drop `query` (adjust it with "
                "`matchers` / `model_label`, or use preset: custom)"
            )
        return self


class BasicAuthConfig(BaseModel):
    """HTTP basic authentication (Prometheus's own web.config.file, most reverse proxies)."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(description="User name.")
    password: SecretStr | None = Field(default=None, description="Password (or password_file).")
    password_file: str | None = Field(
        default=None, description="File holding the password (a Secret mount; read at each use)."
    )

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuthConfig:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("basic_auth needs exactly one of password and password_file")
        return self


class TlsConfig(BaseModel):
    """TLS towards Prometheus: the CA to trust and, for mTLS, the client certificate."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str | None = Field(default=None, description="CA bundle (PEM) to verify the server.")
    cert_file: str | None = Field(default=None, description="Client certificate (PEM), for mTLS.")
    key_file: str | None = Field(default=None, description="Client private key (PEM), for mTLS.")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls needs both cert_file and key_file for a client certificate")
        return self


class TenantConfig(BaseModel):
    """The tenant of a multi-tenant Prometheus API (Mimir, Cortex, Thanos receive/query)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="Tenant id (or id_file).")
    id_file: str | None = Field(default=None, description="File holding the tenant id.")
    header: str = Field(
        default="X-Scope-OrgID",
        description="Header carrying it: X-Scope-OrgID (Mimir, Cortex), THANOS-TENANT (Thanos).",
    )

    @model_validator(mode="after")
    def _one_id(self) -> TenantConfig:
        if (self.id is None) == (self.id_file is None):
            raise ValueError("tenant needs exactly one of id and id_file")
        return self


class SigV4Config(BaseModel):
    """AWS Signature Version 4 (Amazon Managed Service for Prometheus).

    Credentials, read at each use: files ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
    optionally ``AWS_SESSION_TOKEN`` in ``credentials_dir``; else the same environment
    variables; else web identity (EKS IRSA: ``AWS_ROLE_ARN``, ``AWS_WEB_IDENTITY_TOKEN_FILE``).
    """

    model_config = ConfigDict(extra="forbid")

    region: str = Field(description="AWS region of the workspace, e.g. eu-west-1.")
    service: str = Field(default="aps", description="Signing service name.")
    credentials_dir: str | None = Field(
        default=None, description="Directory of credential files (a Secret mount)."
    )
    sts_endpoint: str | None = Field(
        default=None, description="STS for web identity (null: https://sts.<region>.amazonaws.com)."
    )
    web_identity_duration_s: int = Field(
        default=3600, ge=900, le=43200, description="Lifetime of web-identity credentials."
    )


class PrometheusSourceConfig(BaseModel):
    """Where and how to read request-rate history from Prometheus."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="http://prometheus:9090", description="Prometheus base URL.")
    preset: str = Field(
        default=CUSTOM,
        description="Demand preset: vllm, sglang, tgi, triton, kserve, knative, istio, "
        "ingress-nginx, or custom (`query` + `model_label`). See docs/demand.md.",
    )
    query: str = Field(
        default=DEFAULT_QUERY,
        description="custom preset: PromQL returning one series per model, in requests per second.",
    )
    model_label: str | None = Field(
        default=None,
        description="Label that carries the model id (null: the preset's label; `model` for "
        "custom).",
    )
    matchers: str = Field(
        default="",
        description='Extra label matchers added to a preset\'s selector, e.g. namespace="llm".',
    )
    zero_fill: bool | None = Field(
        default=None,
        description="Read an absent step of a model already seen as 0 requests (null: on for "
        "presets, off for custom).",
    )
    queries: list[DemandQueryConfig] = Field(
        default_factory=list,
        description="Several demand queries, combined per model id (instead of preset/query).",
    )
    combine: Literal["sum", "max"] = Field(
        default="sum",
        description="How several queries' counts of one model combine: sum (disjoint sources, "
        "e.g. two engines) or max (overlapping sources, e.g. an engine and its gateway).",
    )
    rate_window_s: int | None = Field(
        default=None,
        ge=1,
        description="rate() window of preset queries (null: the larger of step_s and 120 s, four "
        "scrapes at the common 30 s interval, so one missed scrape is not read as a gap).",
    )
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
    bearer_token_file: str | None = Field(
        default=None,
        description="File holding the bearer token (a Secret mount; read at each use).",
    )
    basic_auth: BasicAuthConfig | None = Field(default=None, description="HTTP basic auth.")
    tls: TlsConfig | None = Field(default=None, description="CA and client certificate (mTLS).")
    tenant: TenantConfig | None = Field(default=None, description="Tenant header (Mimir, Thanos).")
    sigv4: SigV4Config | None = Field(
        default=None, description="AWS SigV4 signing (Amazon Managed Service for Prometheus)."
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return check_preset_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> PrometheusSourceConfig:
        if self.queries and (
            self.preset != CUSTOM
            or self.query != DEFAULT_QUERY
            or self.model_label is not None
            or self.matchers
            or self.zero_fill is not None
        ):
            raise ValueError(
                "give either `queries` or the single query's preset/query/model_label/matchers/"
                "zero_fill, not both (move them into an entry of `queries`)"
            )
        if self.preset != CUSTOM and self.query != DEFAULT_QUERY:
            raise ValueError(
                f"preset {self.preset!r} builds its own PromQL; drop `query` (or use preset: "
                "custom)"
            )
        authorizations = [
            name
            for name, value in (
                ("bearer_token", self.bearer_token),
                ("bearer_token_file", self.bearer_token_file),
                ("basic_auth", self.basic_auth),
                ("sigv4", self.sigv4),
            )
            if value is not None
        ]
        if len(authorizations) > 1:
            raise ValueError(
                f"{' and '.join(authorizations)} all set the Authorization header; keep one"
            )
        return self

    def demand_queries(self) -> list[DemandQueryConfig]:
        """The queries to run: ``queries``, or the single one the top-level fields describe."""
        if self.queries:
            return list(self.queries)
        return [
            DemandQueryConfig(
                preset=self.preset,
                query=self.query if self.preset == CUSTOM else None,
                model_label=self.model_label,
                matchers=self.matchers,
                zero_fill=self.zero_fill,
            )
        ]


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
