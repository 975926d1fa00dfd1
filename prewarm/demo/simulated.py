"""The demo's simulated side: each policy on the same trace and catalog (``prewarm bench``).

Owns: running the bench's policies on the demo's trace and catalog. The simulator models what the
demo cannot run on one machine (nodes, image pulls, replica starts) with the catalog's stage
figures; the ``prewarm`` policy in it runs the daemon's own decision cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.catalog import Catalog
from prewarm.sim.bench import load_bench_input, run_bench
from prewarm.sim.policies import POLICY_NAMES


@dataclass(frozen=True, slots=True)
class SimulatedRuns:
    """Each policy's bench summary, by name."""

    summaries: dict[str, dict[str, float]]


def run_policies(
    trace: Path,
    catalog: Catalog,
    *,
    policies: Sequence[str] = POLICY_NAMES,
    progress: Callable[[str], None] | None = None,
) -> SimulatedRuns:
    """Every policy in ``policies`` on ``trace`` under the bench's default budget
    (:func:`prewarm.sim.bench.run_bench`); ``progress`` is told each policy's name as it starts."""
    started: set[str] = set()

    def tell(label: str, _ticks: int) -> None:
        if progress is not None and label not in started:
            started.add(label)
            progress(label)

    results = run_bench(load_bench_input(trace, catalog), policies, progress=tell)
    return SimulatedRuns(summaries={name: result.summary() for name, result in results.items()})
