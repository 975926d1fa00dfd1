"""The demo's simulated side: each policy on the same trace and catalog (``prewarm bench``), and
how long the first request of each shown spike waited for a replica under each policy.

Owns: running the bench's policies with a recorder around each (what every tick saw: arrivals
and ready replicas of the shown models) and reading a spike's first-request wait from it. The
simulator models what the demo cannot run on one machine (nodes, image pulls, replica starts) with
the catalog's stage figures; the ``prewarm`` policy in it runs the daemon's own decision cycle.
Must not: change what a policy decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.ids import ModelId
from planner.catalog import Catalog
from prewarm.sim.bench import BenchInput, load_bench_input, run_policy
from prewarm.sim.engine import Decision, Observation, Policy, SimSetup
from prewarm.sim.policies import POLICY_NAMES, make_policy


@dataclass(frozen=True, slots=True)
class SpikeWait:
    """One policy's answer to one spike's first request (trace clock, seconds).

    ``first_request_s`` is the start of the simulator tick holding the spike's first request;
    ``ready_s`` the start of the first tick from then on with a ready replica (equal when one was
    ready); ``wait_s`` the difference, to a tick's resolution (``tick_s``).
    """

    first_request_s: float
    ready_s: float
    tick_s: float

    @property
    def wait_s(self) -> float:
        """How long the spike's first request waited for a replica."""
        return max(0.0, self.ready_s - self.first_request_s)


@dataclass(slots=True)
class _Recorder:
    """Wraps a policy and keeps, per tick, the watched models' arrivals and ready replicas."""

    inner: Policy
    rows: list[int]
    name: str = ""
    times_s: list[float] = field(default_factory=list)
    arrivals: list[np.ndarray] = field(default_factory=list)
    ready: list[np.ndarray] = field(default_factory=list)

    def bind(self, setup: SimSetup) -> None:
        self.inner.bind(setup)

    def decide(self, obs: Observation) -> Decision:
        self.times_s.append(obs.now_s)
        self.arrivals.append(obs.arrivals[self.rows].copy())
        self.ready.append(obs.ready[self.rows].copy())
        return self.inner.decide(obs)

    def activation_delay_s(self, arrival_s: float) -> float:
        return self.inner.activation_delay_s(arrival_s)

    def spike_wait(self, column: int, onset_s: float, tick_s: float) -> SpikeWait | None:
        """The wait of the first request at or after ``onset_s`` (None: none came)."""
        times = np.asarray(self.times_s)
        arrivals = np.asarray(self.arrivals)[:, column]
        ready = np.asarray(self.ready)[:, column]
        # arrivals[k] came during [times[k] - tick_s, times[k]); ready[k] is the state at times[k].
        came = np.flatnonzero((arrivals > 0) & (times - tick_s >= onset_s - 1e-6))
        if came.size == 0:
            return None
        k = int(came[0])
        first_s = float(times[k] - tick_s)
        if k > 0 and ready[k - 1] > 0:
            return SpikeWait(first_s, first_s, tick_s)
        later = np.flatnonzero(ready[k:] > 0)
        ready_s = float(times[k + int(later[0])]) if later.size else float("inf")
        return SpikeWait(first_s, ready_s, tick_s)


@dataclass(frozen=True, slots=True)
class SimulatedRuns:
    """Each policy's bench summary and its waits for the shown spikes (by model)."""

    summaries: dict[str, dict[str, float]]
    waits: dict[str, dict[ModelId, SpikeWait]]
    tick_s: float


def run_policies(
    trace: Path,
    catalog: Catalog,
    onsets_s: Mapping[ModelId, float],
    *,
    policies: Sequence[str] = POLICY_NAMES,
    progress: Callable[[str], None] | None = None,
) -> SimulatedRuns:
    """Every policy in ``policies`` on ``trace`` under the bench's default budget, watching the
    spikes that start at ``onsets_s`` (trace clock)."""
    bench: BenchInput = load_bench_input(trace, catalog)
    models = list(onsets_s)
    rows = [bench.trace.models.index(model) for model in models]
    summaries: dict[str, dict[str, float]] = {}
    waits: dict[str, dict[ModelId, SpikeWait]] = {}
    for name in policies:
        if progress is not None:
            progress(name)
        policy: Any = make_policy(name, bench.trace)
        recorder = _Recorder(policy, rows, name=policy.name)
        result = run_policy(bench, recorder, budget_gb=bench.default_budget_gb)
        summaries[name] = result.summary()
        waits[name] = {}
        for column, model in enumerate(models):
            wait = recorder.spike_wait(column, onsets_s[model], bench.trace.dt_s)
            if wait is not None:
                waits[name][model] = wait
    return SimulatedRuns(summaries=summaries, waits=waits, tick_s=bench.trace.dt_s)
