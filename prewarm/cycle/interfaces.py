"""The boundaries of a decision cycle: where history comes from, what the cluster looks like, and
who applies a plan.

Owns: :class:`ClusterSnapshot` (the observed cluster, with stage durations that happened since the
last observation) and the three protocols a driver implements: :class:`HistorySource`,
:class:`ClusterObserver` and :class:`PlanApplier`. The daemon implements them over Prometheus,
Kubernetes and the GPU agents; the simulator behind ``prewarm bench`` over its simulated cluster.
Must not: import an I/O client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from common.ids import ModelId, PoolName
from forecaster.types import SeriesBatch
from planner.actions import ActionResult, WarmPlan
from planner.leadtime import StageObservation
from planner.planner import ModelState, NodeState, PoolState


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What the cluster looks like now, as the cycle needs it.

    ``stage_observations`` are durations of stages that *finished* since the previous snapshot
    (node ready, image pulled, weights loaded, replica ready): a stage's duration is known only
    after it happened, and lead times are learned from nothing else.
    """

    models: Mapping[ModelId, ModelState]
    pools: Mapping[PoolName, PoolState]
    nodes: tuple[NodeState, ...] = ()
    placeholder_gpus: Mapping[PoolName, int] = field(default_factory=dict)
    stage_observations: tuple[StageObservation, ...] = ()


class HistorySource(Protocol):
    """Where request history comes from (Prometheus in production)."""

    async def fetch(self, *, now_s: float) -> SeriesBatch | None:
        """New complete steps since the last call (None: nothing new); TemporaryError if down."""
        ...


class ClusterObserver(Protocol):
    """Reads the cluster (workload replicas, pools, agents' holdings)."""

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """A snapshot covering at least ``models``."""
        ...


class PlanApplier(Protocol):
    """Applies a plan to the cluster and the agents (the actuator)."""

    async def apply(self, plan: WarmPlan, *, dry_run: bool) -> Sequence[ActionResult]:
        """Apply every action idempotently; one result per action."""
        ...
