"""Settings of the actuator (a section of prewarm's settings tree).

Owns the typed, validated knobs of how plans are applied: where prewarm-owned objects live, how
pools are found (the node label), what placeholder and pre-pull pods look like, which pools are
Cluster API MachineDeployments, retry/backoff of API calls and how GPU agents are reached. Must not
do I/O; defaults are production defaults.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class PlaceholderConfig(BaseModel):
    """Placeholder (pause) pods that hold node capacity ahead of demand."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        default="registry.k8s.io/pause:3.10", description="Image of the placeholder containers."
    )
    priority_class: str = Field(
        default="prewarm-placeholder",
        description="A PriorityClass with a negative value (the chart creates it), so every real "
        "pod preempts the placeholders.",
    )
    gpus_per_pod: int = Field(
        default=1, ge=1, description="nvidia.com/gpu requested by each placeholder pod."
    )
    cpu_request: str = Field(default="10m", description="CPU request of each placeholder pod.")
    memory_request: str = Field(default="16Mi", description="Memory request of each pod.")
    shape_from_workload: bool = Field(
        default=True,
        description="Shape each placeholder pod like one replica of the model it holds room for, "
        "copied from its workload's pod template (GPUs from resources.limits['nvidia.com/gpu'], "
        "CPU and memory requests, tolerations, nodeSelector, affinity, "
        "topologySpreadConstraints): one placeholder pod per replica, so a multi-GPU replica's "
        "GPUs are held on one node. Off: the pool's shape (`pools.<pool>.placeholder`, else "
        "this section) for every pod.",
    )
    expendable_priority_cutoff: int = Field(
        default=-10,
        description="The cluster autoscaler's --expendable-pods-priority-cutoff (its default "
        "-10). It ignores pending pods whose priority is BELOW the cut-off (strictly less): "
        "they never make it add a node. The PriorityClass's value must therefore lie in "
        "[cut-off, -1]; the actuator reads the PriorityClass and refuses to place placeholders "
        "otherwise. Karpenter provisions for pending pods of any priority.",
    )


class PlaceholderShape(BaseModel):
    """A pool's own placeholder pod shape; a field left unset takes `actuator.placeholder`'s."""

    model_config = ConfigDict(extra="forbid")

    gpus_per_pod: int | None = Field(
        default=None, ge=1, description="nvidia.com/gpu of each pod: one replica's GPUs."
    )
    cpu_request: str | None = Field(default=None, description="CPU request of each pod.")
    memory_request: str | None = Field(default=None, description="Memory request of each pod.")
    tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        description="Tolerations of each pod (default: one for the nvidia.com/gpu NoSchedule "
        "taint).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels each pod also selects, beside `pool_label`=<pool>.",
    )


class PrepullConfig(BaseModel):
    """Image pre-pull pods: one per node of a pool, run once, then removed."""

    model_config = ConfigDict(extra="forbid")

    helper_image: str = Field(
        default="busybox:1.37-musl",
        description="Image holding a static busybox; its binary is copied into an emptyDir and run "
        "from the target image, so the target needs no shell or binaries of its own.",
    )
    helper_binary: str = Field(
        default="/bin/busybox", description="Path of the static busybox inside helper_image."
    )
    helper_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Names of Secrets (kubernetes.io/dockerconfigjson) for pulling helper_image "
        "from a private registry, added to every pre-pull pod. A pod can only use Secrets of its "
        "own namespace and pre-pull pods run in the namespace of the model's workload, so each "
        "must exist there; mirroring helper_image into the registry the workloads already pull "
        "from needs none.",
    )
    run_as_user: int = Field(
        default=65532,
        ge=1,
        description="Numeric user (and group) pre-pull pods run as: non-root, as the restricted "
        "Pod Security Standard requires; any UID works (the copied busybox is world-executable).",
    )
    cpu_request: str = Field(default="1m", description="CPU request of each pre-pull pod.")
    memory_request: str = Field(default="8Mi", description="Memory request of each pod.")

    @field_validator("helper_pull_secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
                raise ValueError(
                    f"{name!r} is not a Secret name (lower-case DNS subdomain, e.g. 'regcred')"
                )
        return value


class MachineDeploymentRef(BaseModel):
    """A Cluster API MachineDeployment that backs a node pool (scaled through ``/scale``)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str
    name: str
    api_version: str = Field(
        default="cluster.x-k8s.io/v1beta1", description="MachineDeployment apiVersion to use."
    )


class PoolConfig(BaseModel):
    """Per node pool overrides."""

    model_config = ConfigDict(extra="forbid")

    gpus_per_node: int = Field(
        default=8,
        ge=1,
        description="GPUs on one node of this pool. When not set, for a Karpenter NodePool it "
        "comes from its requirement on karpenter.k8s.aws/instance-gpu-count or "
        "karpenter.azure.com/sku-gpu-count (the largest value of an `In`), else 8.",
    )
    placeholder: PlaceholderShape = Field(
        default_factory=PlaceholderShape,
        description="This pool's placeholder pod shape, used when a placeholder is not shaped "
        "from a workload.",
    )
    machine_deployment: MachineDeploymentRef | None = Field(
        default=None,
        description="Scale this MachineDeployment directly instead of placing placeholder pods.",
    )


class RetryConfig(BaseModel):
    """Retries of Kubernetes API calls that failed for a temporary reason (429, 5xx, no answer)."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=8, ge=1, description="Tries per call, the first included.")
    initial_backoff_s: float = Field(default=0.2, gt=0, description="First wait between tries.")
    max_backoff_s: float = Field(default=5.0, gt=0, description="Longest wait between tries.")
    request_timeout_s: float = Field(default=15.0, gt=0, description="Per-request timeout.")


class AgentClientConfig(BaseModel):
    """How the actuator reaches the GPU agent on a node."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(
        default=50061,
        ge=1,
        le=65535,
        description="The agents' gRPC port when an agent pod names no container port 'grpc' and "
        "has no prewarm.io/agent-address annotation.",
    )
    label_selector: str = Field(
        default="app.kubernetes.io/name=prewarm-gpu-agent",
        description="Selects the agent DaemonSet's pods (in `namespace`); the Running one on a "
        "node is called at its prewarm.io/agent-address annotation (host:port) when set, else at "
        "its pod IP and its container port named 'grpc' (else `port`).",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline of an Evict, and the least time a Preload gets."
    )
    status_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Deadline of the Status call each observation makes to every node's agent "
        "(all concurrently): an agent that has not answered by then is unknown for that tick "
        "(nothing is placed on its node) and the tick goes on.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token the agents expect (their auth.mode=token)."
    )
    token_file: str | None = Field(
        default=None,
        description="A file (Kubernetes Secret mount) holding that token instead, read at every "
        "call, so a rotated Secret is used without a restart.",
    )
    attempts: int = Field(
        default=4,
        ge=1,
        description="Tries of a call the agent answered UNAVAILABLE (or that could not reach it).",
    )
    max_concurrency: int = Field(default=16, ge=1, description="Agent calls in flight at once.")

    @model_validator(mode="after")
    def _one_token_source(self) -> AgentClientConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set actuator.agent.token or actuator.agent.token_file, not both")
        return self


class ActuatorConfig(BaseModel):
    """How plans are applied to the cluster."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(default="prewarm", description="Namespace for prewarm-owned objects.")
    field_manager: str = Field(default="prewarm", description="Server-side apply field manager.")
    dry_run: bool = Field(default=False, description="Send every write with dryRun=All.")
    pool_label: str = Field(
        default="prewarm.io/pool",
        description="Node label whose value names a node's pool, e.g. karpenter.sh/nodepool "
        "(Karpenter sets it to the NodePool's name on every node it launches) or "
        "cloud.google.com/gke-nodepool. Karpenter NodePools (karpenter.sh/v1) are pools even "
        "with no node: named by their template label `pool_label` when they set one, else by "
        "their own name when `pool_label` is karpenter.sh/nodepool.",
    )
    placeholder: PlaceholderConfig = Field(default_factory=PlaceholderConfig)
    prepull: PrepullConfig = Field(default_factory=PrepullConfig)
    pools: dict[str, PoolConfig] = Field(
        default_factory=dict, description="Per-pool overrides by pool name."
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)
    agent: AgentClientConfig = Field(default_factory=AgentClientConfig)

    @field_validator("pool_label")
    @classmethod
    def _valid_label_key(cls, value: str) -> str:
        if not _LABEL_KEY.match(value) or len(value.rsplit("/", 1)[-1]) > 63:
            raise ValueError(
                f"{value!r} is not a Kubernetes label key (e.g. 'karpenter.sh/nodepool')"
            )
        return value

    def pool(self, name: str) -> PoolConfig:
        """The settings of pool ``name`` (defaults when it has no entry)."""
        return self.pools.get(name) or PoolConfig()
