"""The observed cluster as one value: :class:`ClusterSnapshot`.

Owns the type every cluster observer returns (the daemon's over Kubernetes and the GPU agents in
:mod:`actuator.observer`, the simulator's over its simulated cluster) and the decision cycle reads.
It lives here, beside the planner's own observed-state types, so the actuator can build it without
importing the application shell; :mod:`prewarm.cycle.interfaces` re-exports it.
Must not: import an I/O client or compute anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.ids import ModelId, PoolName
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
