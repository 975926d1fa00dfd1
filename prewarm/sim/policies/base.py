"""Pieces every policy shares: load-based replica counts and the last-arrival clock.

All policies scale *above one replica* the same way (an HPA-like rule on observed load, scale-down
stabilised over 5 minutes, as Kubernetes' HPA does by default), so the comparison is about what
each policy does around zero: when to unload, when to pre-load, what to evict.
"""

from __future__ import annotations

import numpy as np

from prewarm.sim.cluster import FloatArray, IntArray, ModelTable

TARGET_UTILIZATION = 0.8
"""Share of a replica's ``replica_rps`` the load scaler plans to use."""

SCALE_DOWN_WINDOW_S = 300.0
"""HPA's default scale-down stabilisation window."""


def replicas_for_rate(rate_rps: FloatArray, replica_rps: FloatArray) -> IntArray:
    """Replicas needed to serve ``rate_rps`` at :data:`TARGET_UTILIZATION` (0 for no load).

    ``replica_rps`` broadcasts against ``rate_rps`` (per model, or per model and tick).
    """
    needed: IntArray = np.ceil(rate_rps / (replica_rps * TARGET_UTILIZATION) - 1e-9).astype(
        np.int64
    )
    return np.maximum(needed, 0)


class LoadScaler:
    """HPA-like: replicas for the observed rate, the max over the stabilisation window."""

    def __init__(self, table: ModelTable, dt_s: float) -> None:
        self.table = table
        self.dt_s = dt_s
        window = max(1, round(SCALE_DOWN_WINDOW_S / dt_s))
        self.ring = np.zeros((window, table.size), np.int64)
        self.position = 0

    def update(self, arrivals: IntArray) -> IntArray:
        """Fold in the last tick's arrivals; return the stabilised replica counts."""
        self.ring[self.position] = replicas_for_rate(arrivals / self.dt_s, self.table.replica_rps)
        self.position = (self.position + 1) % self.ring.shape[0]
        result: IntArray = self.ring.max(axis=0)
        return result


class ArrivalClock:
    """When each model last had a request (``-inf`` before the first)."""

    def __init__(self, size: int) -> None:
        self.last_s = np.full(size, -np.inf)

    def update(self, arrivals: IntArray, *, tick_end_s: float) -> None:
        """Mark models with arrivals in the tick that ended at ``tick_end_s``."""
        self.last_s[arrivals > 0] = tick_end_s

    def idle_s(self, now_s: float) -> FloatArray:
        """Seconds since each model's last request (``inf`` if none yet)."""
        idle: FloatArray = now_s - self.last_s
        return idle
