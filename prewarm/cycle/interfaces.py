"""The boundaries of a decision cycle: where history comes from, what the cluster looks like, and
who applies a plan.

Owns the three protocols a driver implements: :class:`HistorySource`, :class:`ClusterObserver` and
:class:`PlanApplier`. The daemon implements them over Prometheus, Kubernetes and the GPU agents;
the simulator behind ``prewarm bench`` over its simulated cluster. :class:`ClusterSnapshot` (the
observed cluster, with stage durations that happened since the last observation) is defined in
:mod:`planner.observed`, where the actuator's observer can import it, and re-exported here.
Must not: import an I/O client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from common.ids import ModelId
from forecaster.types import SeriesBatch
from planner.actions import ActionResult, WarmPlan
from planner.observed import ClusterSnapshot as ClusterSnapshot


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
