"""Settings of the control API and the KEDA external scaler (the ``control`` section).

Owns: the typed, validated knobs of the control gRPC server (listen address, deadlines), the caps a
manual request is checked against, where requests are stored in the cluster, auth (bearer tokens
with read/write scopes, or TLS client certificates) and the KEDA scaler's defaults. Must not do
I/O: token files are read by :mod:`prewarm.control.auth` when the server starts.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from common.addresses import is_loopback, on_loopback

DEFAULT_PORT = 50071
"""The control API's port (gRPC; also the KEDA external scaler). Not 9090: Prometheus has it."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class Scope(enum.StrEnum):
    """What a credential may do: ``read`` (Get*/List*/Explain, KEDA) or ``write`` (everything)."""

    READ = "read"
    WRITE = "write"


class TokenConfig(BaseModel):
    """One bearer token: a name (recorded as ``created_by``), a scope, and the secret itself.

    Give the secret inline (``token``; from the environment, e.g. a Kubernetes Secret mapped to an
    env var) or as a file (``file``; e.g. a mounted Secret). Exactly one of the two.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63, description="Who holds it, e.g. 'oncall'.")
    scope: Scope = Scope.READ
    token: SecretStr | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> TokenConfig:
        if (self.token is None) == (self.file is None):
            raise ValueError(
                f"token {self.name!r}: give exactly one of 'token' (the secret) or 'file' "
                "(a path holding it)"
            )
        return self


class CertSubjectConfig(BaseModel):
    """A TLS client certificate's common name and the scope it is given."""

    model_config = ConfigDict(extra="forbid")

    common_name: str = Field(min_length=1)
    scope: Scope = Scope.READ


class TlsConfig(BaseModel):
    """Server TLS; with ``client_ca_file`` set, clients must present a certificate it signed."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = Field(
        default=None, description="CA of client certificates; set it to require mTLS."
    )
    subjects: tuple[CertSubjectConfig, ...] = Field(
        default=(), description="Scopes of client certificates, by common name."
    )


class AuthConfig(BaseModel):
    """Who may call the control API.

    ``mode``: ``token`` (bearer tokens in ``authorization`` metadata), ``mtls`` (client certificate
    common names, needs ``tls.client_ca_file``), or ``none`` (anyone who reaches the port may read
    and write, so the server then listens on loopback only: a development daemon).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["token", "mtls", "none"] = Field(
        default="token",
        description="token (bearer tokens), mtls (client certificates) or none (no credentials; "
        "the control API then listens on loopback only).",
    )
    tokens: tuple[TokenConfig, ...] = ()
    keda_anonymous: bool = Field(
        default=False,
        description="Let the KEDA external scaler be called without credentials (it only reads "
        "forecasts). Off by default: KEDA authenticates with a read token in the trigger's "
        "`tokenFromEnv` metadata or a TLS client certificate (docs/keda.md).",
    )

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, tokens: tuple[TokenConfig, ...]) -> tuple[TokenConfig, ...]:
        names = [token.name for token in tokens]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"token names must be unique; repeated: {', '.join(duplicates)}")
        return tokens


class KedaConfig(BaseModel):
    """Defaults of the KEDA external scaler; a ScaledObject's metadata overrides them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    quantile: float = Field(default=0.9, gt=0, lt=1, description="Forecast quantile served.")
    lead_time_s: float = Field(
        default=300.0, ge=0, description="How far ahead the metric and IsActive look."
    )
    activation_probability: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="IsActive is true when P(request within the lead time) exceeds this.",
    )
    target_per_replica: float = Field(
        default=1.0, gt=0, description="Requests/s one replica should take (the HPA target)."
    )
    stream_interval_s: float = Field(
        default=5.0, gt=0, description="How often StreamIsActive re-evaluates."
    )
    state_max_age_s: float = Field(
        default=2.0,
        ge=0,
        description="How stale the manual requests the scaler reads may be (a cache, so that "
        "many ScaledObjects polling do not each read the ConfigMap); writes through this replica "
        "are seen at once.",
    )


class ControlConfig(BaseModel):
    """The control gRPC API: server, caps on manual requests, storage, auth, KEDA scaler."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen_address: str = Field(
        default=f"0.0.0.0:{DEFAULT_PORT}",
        description="host:port of the gRPC server (port 0 = any free). With auth.mode=none it "
        "must be a loopback address; left at the default, it becomes 127.0.0.1 with the same "
        "port.",
    )
    advertise_address: str | None = Field(
        default=None,
        description="host:port other replicas tell clients to use for this one when it leads "
        "(e.g. the pod IP); default: listen_address.",
    )
    max_call_s: float = Field(
        default=30.0, gt=0, description="Server-side cap on every call's deadline."
    )
    namespace: str = Field(default="prewarm", description="Namespace of the state ConfigMap.")
    configmap_name: str = Field(
        default="prewarm-control", description="ConfigMap holding requests, pins and pauses."
    )
    max_replicas_per_request: int = Field(
        default=64, ge=1, description="Budget cap: replicas one manual request may ask for."
    )
    max_gpu_bytes_per_request: int | None = Field(
        default=None,
        ge=0,
        description="Budget cap: GPU bytes (weights x replicas) of one request with tier gpu.",
    )
    max_duration_s: float = Field(
        default=7 * 86400.0, gt=0, description="Longest a request, pin or pause may last."
    )
    max_start_ahead_s: float = Field(
        default=30 * 86400.0, gt=0, description="Furthest in the future a request may start."
    )
    start_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="A start this far in the past (clock skew) counts as now; earlier is refused.",
    )
    max_active_requests: int = Field(
        default=256, ge=1, description="Stored (pending or active) requests at most."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tls: TlsConfig | None = None
    keda: KedaConfig = Field(default_factory=KedaConfig)

    @field_validator("namespace")
    @classmethod
    def _namespace_is_label(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"namespace {value!r} is not a valid DNS label (lowercase, a-z0-9-)")
        return value

    @field_validator("configmap_name")
    @classmethod
    def _name_is_subdomain(cls, value: str) -> str:
        if not _DNS_SUBDOMAIN.match(value):
            raise ValueError(f"configmap_name {value!r} is not a valid DNS subdomain")
        return value

    @field_validator("listen_address", "advertise_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{value!r} must be host:port, e.g. 0.0.0.0:{DEFAULT_PORT}")
        return value

    @model_validator(mode="after")
    def _mtls_needs_ca(self) -> ControlConfig:
        if self.auth.mode == "mtls" and (self.tls is None or self.tls.client_ca_file is None):
            raise ValueError(
                "auth.mode=mtls needs tls.cert_file, tls.key_file and tls.client_ca_file"
            )
        return self

    @model_validator(mode="after")
    def _no_auth_on_loopback_only(self) -> ControlConfig:
        # Without credentials anyone who reaches the port may pin, pause and request replicas.
        if self.auth.mode != "none" or is_loopback(self.listen_address):
            return self
        if "listen_address" not in self.model_fields_set:
            self.listen_address = on_loopback(self.listen_address)
            return self
        raise ValueError(
            f"auth.mode=none serves the control API without credentials, so it listens on "
            f"loopback only, and listen_address is {self.listen_address}: set "
            f"control.listen_address to 127.0.0.1:<port> (or leave it unset), or configure "
            "control.auth.mode=token with control.auth.tokens"
        )
