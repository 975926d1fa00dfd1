"""``prewarm bench``'s engine: load a trace, build the cluster, run each policy, summarise.

The default GPU memory budget is derived from the trace so every policy faces the same, binding
constraint: 1.25 x the peak over time of the *10-minute working set* (the weights of the replicas
that the load of the last 10 minutes needed, at least one for every model with a request). Serving
the peak fits, and so does a fixed 10-minute keep-alive; keeping everything warm does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InvalidInput
from forecaster.sources.trace import read_trace_with_info
from forecaster.types import SeriesBatch
from planner.catalog import Catalog
from prewarm.sim.cluster import ClusterSpec, FloatArray, ModelTable, build_model_table
from prewarm.sim.engine import Policy, SimResult, Simulator, TickTrace, sum_steps, to_ticks
from prewarm.sim.policies import POLICY_NAMES, make_policy
from prewarm.sim.policies.base import replicas_for_rate
from prewarm.sim.policies.prewarm_policy import PrewarmPolicy

WORKING_SET_WINDOW_S = 600.0
BUDGET_HEADROOM = 1.25
WARMUP_SHARE = 0.2
WARMUP_MAX_S = 86_400.0
PER_REQUEST_STEPS_S = (10.0, 20.0, 30.0, 60.0)
MAX_PER_REQUEST_TICKS = 200_000
"""A per-request trace is replayed on the finest of :data:`PER_REQUEST_STEPS_S` that keeps it
within this many ticks: 10 s up to 23 days, 60 s up to 138 days (a replay costs time per tick)."""
SWEEP_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


@dataclass(frozen=True, slots=True)
class BenchInput:
    """A loaded trace with its cost table, cluster and default budget."""

    name: str
    trace: TickTrace
    table: ModelTable
    cluster: ClusterSpec
    default_budget_gb: float
    warmup_ticks: int
    seed: int


def load_bench_input(
    path: Path,
    catalog: Catalog,
    *,
    name: str | None = None,
    cluster: ClusterSpec | None = None,
    seed: int = 0,
) -> BenchInput:
    """Read the trace at ``path`` and prepare a bench (raises InvalidInput on a bad trace)."""
    batch, info = read_trace_with_info(path, per_request_step_s=PER_REQUEST_STEPS_S[0])
    if info.bucket_s is None:
        batch = _coarsen_per_request(batch)
    trace = to_ticks(batch, seed=seed)
    if trace.requests == 0:
        raise InvalidInput(f"{path}: the trace has no requests")
    spec = cluster or ClusterSpec()
    table = build_model_table(trace.models, catalog, spec)
    warmup_s = min(WARMUP_SHARE * trace.ticks * trace.dt_s, WARMUP_MAX_S)
    return BenchInput(
        name=name or path.name,
        trace=trace,
        table=table,
        cluster=spec,
        default_budget_gb=default_budget_gb(trace, table),
        warmup_ticks=int(warmup_s // trace.dt_s),
        seed=seed,
    )


def _coarsen_per_request(batch: SeriesBatch) -> SeriesBatch:
    """``batch`` (on the finest per-request grid) summed onto the finest allowed grid that keeps
    it within :data:`MAX_PER_REQUEST_TICKS` steps (the coarsest allowed when none does)."""
    steps = batch.counts.shape[1]
    group = 1
    for step_s in PER_REQUEST_STEPS_S:
        group = round(step_s / batch.step_s)
        if math.ceil(steps / group) <= MAX_PER_REQUEST_TICKS:
            break
    if group == 1:
        return batch
    return SeriesBatch(
        models=batch.models,
        start_s=batch.start_s,
        step_s=batch.step_s * group,
        counts=sum_steps(batch.counts, group),
    )


def default_budget_gb(trace: TickTrace, table: ModelTable) -> float:
    """The documented default budget: 1.25 x the peak of the 10-minute working set."""
    dt = trace.dt_s
    need = replicas_for_rate(trace.counts / dt, table.replica_rps[:, None])
    need = np.maximum(need, (trace.counts > 0).astype(np.int64))
    width = max(1, round(WORKING_SET_WINDOW_S / dt))
    windowed = need.copy()
    shifted = need
    for _ in range(1, width):
        shifted = np.concatenate([np.zeros((need.shape[0], 1), np.int64), shifted[:, :-1]], axis=1)
        np.maximum(windowed, shifted, out=windowed)
    gb: FloatArray = (windowed * table.weights_gb[:, None]).sum(axis=0)
    budget = BUDGET_HEADROOM * float(gb.max())
    return max(budget, float(table.weights_gb.max()))


def run_policy(
    bench: BenchInput,
    policy: Policy,
    *,
    budget_gb: float,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Run one policy on the bench's trace under ``budget_gb``."""
    simulator = Simulator(
        bench.trace,
        bench.table,
        bench.cluster,
        budget_gb=budget_gb,
        warmup_ticks=bench.warmup_ticks,
        seed=bench.seed,
    )
    return simulator.run(policy, progress=progress)


def check_policy_names(names: Sequence[str]) -> list[str]:
    """The policy names, validated; :class:`InvalidInput` lists the known ones otherwise."""
    unknown = [name for name in names if name not in POLICY_NAMES]
    if unknown:
        raise InvalidInput(
            f"unknown polic{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"choose from {', '.join(POLICY_NAMES)}"
        )
    if not names:
        raise InvalidInput(f"no policies given; choose from {', '.join(POLICY_NAMES)}")
    return list(dict.fromkeys(names))


def run_bench(
    bench: BenchInput,
    policies: Sequence[str],
    *,
    budget_gb: float | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, SimResult]:
    """Run each named policy; results by name, in the order given."""
    budget = bench.default_budget_gb if budget_gb is None else budget_gb
    if not (budget > 0 and math.isfinite(budget)):
        raise InvalidInput(f"--gpu-memory-budget must be a positive number of GB, got {budget}")
    results: dict[str, SimResult] = {}
    for name in check_policy_names(policies):
        policy = make_policy(name, bench.trace)
        if isinstance(policy, PrewarmPolicy):
            policy.log_busiest(bench.trace.counts)

        def tick(count: int, _name: str = name) -> None:
            if progress is not None:
                progress(_name, count)

        result = run_policy(bench, policy, budget_gb=budget, progress=tick)
        if isinstance(policy, PrewarmPolicy):
            log = policy.forecast_log
            result.forecasts = (log.models, log.times_s, log.predicted)
        results[name] = result
    return results


def ratio(ours: float, theirs: float) -> float:
    """``ours / theirs``: 1 when both are 0 (the same), ``inf`` when only ``theirs`` is."""
    if theirs > 0:
        return ours / theirs
    return 1.0 if ours == 0 else math.inf


def comparison_lines(results: dict[str, SimResult], *, ours: str = "prewarm") -> list[str]:
    """One line per other policy: ``ours``'s cold starts and idle GPU memory relative to it
    (empty when ``ours`` did not run or ran alone)."""
    if ours not in results:
        return []
    mine = results[ours].summary()
    lines: list[str] = []
    for name, result in results.items():
        if name == ours:
            continue
        theirs = result.summary()
        cold = ratio(mine["cold_start_ratio"], theirs["cold_start_ratio"])
        idle = ratio(mine["idle_gpu_gb_hours"], theirs["idle_gpu_gb_hours"])
        if mine["cold_start_ratio"] == theirs["cold_start_ratio"] == 0:
            cold_text = "no cold starts for either"
        elif math.isinf(cold):
            cold_text = f"cold starts where {name} has none"
        else:
            cold_text = f"{cold:.2f}x the cold-start ratio"
        lines.append(f"{ours} vs {name}: {cold_text}, {idle:.2f}x the idle GPU GB-hours")
    return lines


def bench_document(bench: BenchInput, results: dict[str, SimResult]) -> dict[str, object]:
    """The ``prewarm bench --json`` document (the shape the issue fixes)."""
    return {
        "trace": bench.name,
        "requests": bench.trace.requests,
        "models": len(bench.trace.models),
        "policies": {name: result.summary() for name, result in results.items()},
    }
