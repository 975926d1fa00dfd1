"""The planner's output: a ``WarmPlan`` of frozen, typed actions, each with a reason and a value.

This is the contract between the planner (which decides) and the actuator (which applies). Every
action carries ``reason`` (one sentence a person can read in ``prewarm explain``) and ``value``
(predicted cold-start seconds saved over the horizon by doing it; higher is more important). The
actuator applies actions idempotently: applying the same plan twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from common.ids import ModelId, NodeName, PoolName
from common.tiers import Tier as Tier  # re-exported: actions are stated in these tiers


@dataclass(frozen=True, slots=True)
class WorkloadRef:
    """The serving workload of a model: a Deployment (or any object with a ``/scale``)."""

    namespace: str
    name: str
    kind: str = "Deployment"
    api_version: str = "apps/v1"


@dataclass(frozen=True, slots=True)
class ReplicaDemand:
    """``replicas`` replicas of ``model`` (its serving ``workload``) that a :class:`NodeCapacity`
    holds room for, each needing ``gpus_per_replica`` GPUs (the planner's estimate from the
    weights; the actuator shapes the placeholders from the workload's own pod template)."""

    model: ModelId
    workload: WorkloadRef
    replicas: int
    gpus_per_replica: int


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """Hold ``gpus`` GPUs of placeholder capacity in ``pool`` so nodes exist before demand.

    ``demands`` says which replicas the GPUs are for (empty: unknown, e.g. a hand-made action);
    the actuator then shapes one placeholder pod per replica like that replica, so a node that
    fits the placeholder fits the replica.
    """

    pool: PoolName
    gpus: int
    reason: str
    value: float
    demands: tuple[ReplicaDemand, ...] = ()


@dataclass(frozen=True, slots=True)
class ImagePrepull:
    """Pull ``image`` onto the nodes of ``pool`` before ``deadline_s`` (epoch seconds).

    ``workload`` is the serving workload of a model that runs ``image``: the pull uses what that
    workload's pods would pull with (its namespace, its pod template's and ServiceAccount's
    ``imagePullSecrets``). None: a public image, pulled from the actuator's own namespace.
    """

    pool: PoolName
    image: str
    deadline_s: float
    reason: str
    value: float
    workload: WorkloadRef | None = None


@dataclass(frozen=True, slots=True)
class ReplicaFloor:
    """Keep at least ``min_replicas`` replicas of ``model``'s workload until ``until_s``.

    ``value_per_byte`` is the model's value density: the order in which a cluster short of GPU
    memory should give up models' replicas (lowest first).
    """

    model: ModelId
    workload: WorkloadRef
    min_replicas: int
    until_s: float
    reason: str
    value: float
    value_per_byte: float = 0.0


@dataclass(frozen=True, slots=True)
class Preload:
    """Have the GPU agent on ``node`` hold ``model``'s weights in ``tier`` by ``deadline_s``.

    ``value_per_byte`` is what the agent uses to choose what to evict under memory pressure.
    """

    model: ModelId
    node: NodeName
    tier: Tier
    bytes: int
    deadline_s: float
    value_per_byte: float
    reason: str
    value: float


@dataclass(frozen=True, slots=True)
class Evict:
    """Have the GPU agent on ``node`` drop ``model`` from ``tier`` (it stays in slower tiers)."""

    model: ModelId
    node: NodeName
    tier: Tier
    reason: str
    value: float


@dataclass(frozen=True, slots=True)
class EngineSleep:
    """Put the ready replicas of ``model``'s workload to sleep (``asleep``) or wake them, through
    the serving engine's own endpoints (:mod:`planner.engines`). A sleeping replica keeps its
    process and pod, frees its GPU memory and wakes in seconds."""

    model: ModelId
    workload: WorkloadRef
    asleep: bool
    reason: str
    value: float


_A = TypeVar("_A")

Action = NodeCapacity | ImagePrepull | ReplicaFloor | Preload | Evict | EngineSleep


@dataclass(frozen=True, slots=True)
class WarmPlan:
    """Everything the planner wants true at ``now_s`` (epoch seconds), as one immutable value."""

    now_s: float
    actions: tuple[Action, ...]

    def of_type(self, kind: type[_A]) -> tuple[_A, ...]:
        """The actions of one type, in plan order."""
        return tuple(action for action in self.actions if isinstance(action, kind))


Outcome = Literal["ok", "dry_run", "error", "skipped"]


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The result of applying one action of a plan: ``ok``, ``dry_run``, ``error`` or ``skipped``
    (the feature is off: no GPU agent client, Cluster API not installed), with a detail for
    people."""

    action: Action
    result: Outcome
    detail: str = ""
