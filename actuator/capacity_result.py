"""What one node-capacity operation did (placeholders or a MachineDeployment's ``/scale``)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import PrewarmError
from common.ids import PoolName


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """What one capacity operation did. ``changed`` is False when the cluster already matched.

    ``replicas`` is the placeholder pods (or MachineDeployment replicas) now asked for; ``error``
    names what could not be held (other parts of the pool may still be held); ``notes`` what was
    held otherwise than asked (NodePool limits cut it, a pool shape stood in for a workload's).
    """

    pool: PoolName
    target: str
    replicas: int
    changed: bool
    dry_run: bool
    error: PrewarmError | None = None
    notes: str = ""
