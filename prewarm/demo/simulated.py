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
from prewarm.sim.bench import load_bench_input, run_policy
from prewarm.sim.policies import POLICY_NAMES, make_policy


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
    """Every policy in ``policies`` on ``trace`` under the bench's default budget."""
    bench = load_bench_input(trace, catalog)
    summaries: dict[str, dict[str, float]] = {}
    for name in policies:
        if progress is not None:
            progress(name)
        result = run_policy(
            bench, make_policy(name, bench.trace), budget_gb=bench.default_budget_gb
        )
        summaries[name] = result.summary()
    return SimulatedRuns(summaries=summaries)
