"""The oracle: knows the whole trace. A bound on what warm-keeping can achieve, not a competitor.

At each tick it holds, per model, the replicas the load of the next ``lead`` seconds needs (lead =
the model's current start time, plus one tick), so every start finishes before the request it is
for; it keeps placeholder nodes for the demand of the next node-provisioning window, and under
memory pressure it evicts the model whose next request is furthest away (Belady).
"""

from __future__ import annotations

import math

import numpy as np

from prewarm.sim.cluster import IntArray
from prewarm.sim.engine import Decision, Observation, SimSetup, TickTrace
from prewarm.sim.policies.base import replicas_for_rate


def _future_max(values: IntArray, width: int) -> IntArray:
    """``out[:, k] = max(values[:, k : k + width])`` (the window is cut at the end)."""
    out = values.copy()
    shifted = values
    for _ in range(1, width):
        shifted = np.concatenate([shifted[:, 1:], np.zeros((values.shape[0], 1), np.int64)], axis=1)
        np.maximum(out, shifted, out=out)
    return out


class OraclePolicy:
    """Holds exactly what the known future needs, started just in time."""

    def __init__(self, trace: TickTrace) -> None:
        self.name = "oracle"
        self.trace = trace

    def bind(self, setup: SimSetup) -> None:
        self.setup = setup
        counts = self.trace.counts
        table = setup.table
        dt = setup.dt_s
        need = replicas_for_rate(counts / dt, table.replica_rps[:, None])
        need = np.maximum(need, (counts > 0).astype(np.int64))
        self.need = need
        # next_active[i, k]: first tick >= k with a request (ticks if none).
        ticks = counts.shape[1]
        index = np.where(counts > 0, np.arange(ticks)[None, :], ticks)
        self.next_active = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1]
        self._windows: dict[int, IntArray] = {}

    def _window(self, width: int) -> IntArray:
        if width not in self._windows:
            self._windows[width] = _future_max(self.need, width)
        return self._windows[width]

    def decide(self, obs: Observation) -> Decision:
        k = obs.tick
        dt = self.setup.dt_s
        table = self.setup.table
        widths = np.ceil(obs.lead_s / dt).astype(np.int64) + 1
        target = np.zeros(table.size, np.int64)
        for width in np.unique(widths):
            rows = np.flatnonzero(widths == width)
            target[rows] = self._window(int(width))[rows, k]
        node_width = math.ceil(float(np.max(obs.node_lead_s, initial=0.0)) / dt) + 1
        future = self._window(node_width)[:, k]
        pools = len(self.setup.cluster.pools)
        gpus = table.gpus_per_replica
        wanted = np.bincount(table.pool, weights=future * gpus, minlength=pools)
        now = np.bincount(table.pool, weights=target * gpus, minlength=pools)
        node_gpus = np.maximum(0, wanted - now).astype(np.int64)
        next_tick = self.next_active[:, min(k, self.next_active.shape[1] - 1)]
        priority = -next_tick.astype(np.float64)
        return Decision(target=target, priority=priority, node_gpus=node_gpus)

    def activation_delay_s(self, arrival_s: float) -> float:
        return 0.0
