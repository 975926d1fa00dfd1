"""``prewarm bench``'s engine: load a trace, build the cluster, run each policy, summarise.

The default simulated cluster is sized from the trace as an operator would size it, so a policy
with perfect foresight (the oracle) meets :data:`SERVING_OBJECTIVE_P99_S`:

- replicas: a model the catalog does not list may scale to the replicas its peak load needs at the
  load scaler's target utilisation (``replicas_for_rate``), like an HPA ``maxReplicas`` set for the
  peak; the catalog's default cap (1,000) would otherwise queue the busiest clients of a large
  fleet behind a limit no operator would keep. A model the catalog lists keeps its own cap.
- GPU memory: the budget is 1.25 x the peak over time of the *10-minute working set* (the weights
  of the replicas that the load of the last 10 minutes needed at that same target utilisation, at
  least one for every model with a request). Serving the peak fits, and so does a fixed 10-minute
  keep-alive; keeping everything warm does not, so every policy faces the same, binding choice.

``--sweep`` runs each tunable policy at its documented settings (``prewarm.sim.policies``) and
:mod:`prewarm.sim.matched` reads the baselines' curves at prewarm's idle GPU memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.errors import InvalidInput
from forecaster.sources.trace import read_trace_with_info
from forecaster.types import SeriesBatch
from planner.catalog import Catalog
from prewarm.sim.cluster import ClusterSpec, FloatArray, IntArray, ModelTable, build_model_table
from prewarm.sim.engine import Policy, SimResult, Simulator, TickTrace, sum_steps, to_ticks
from prewarm.sim.matched import TARGETS, CurvePoint, Verdict, verdict
from prewarm.sim.policies import (
    POLICY_NAMES,
    Setting,
    default_setting,
    make_policy,
    sweep_settings,
)
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
BUDGET_SWEEP_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
"""``--budget-sweep``: multiples of the budget every policy is run at."""
SERVING_OBJECTIVE_P99_S = 10.0
"""The serving objective the default simulated cluster is sized for: the oracle (every start
done before its request) waits at most this long at the 99th percentile, so what the other
policies wait beyond it is theirs, not the cluster's. A run whose oracle misses it says so
(:func:`serving_check`): its queues are the cluster's, and they dominate every policy's waits."""


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
    table = cap_for_peak(trace, build_model_table(trace.models, catalog, spec))
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


def peak_replicas(trace: TickTrace, table: ModelTable) -> IntArray:
    """Per model, the most replicas one tick's load needs at the target utilisation (at least 1
    for a model with a request)."""
    need = _need(trace, table)
    peak: IntArray = need.max(axis=1) if need.shape[1] else np.zeros(table.size, np.int64)
    return peak


def cap_for_peak(trace: TickTrace, table: ModelTable) -> ModelTable:
    """``table`` with the replica cap of each model the catalog does not list raised to its peak
    need (:func:`peak_replicas`); listed models keep their catalog's ``max_replicas``."""
    peak = peak_replicas(trace, table)
    defaulted = np.array([spec.defaulted for spec in table.specs], np.bool_)
    raise_cap = defaulted & (peak > table.max_replicas)
    if not raise_cap.any():
        return table
    caps = np.where(raise_cap, peak, table.max_replicas).astype(np.int64)
    specs = tuple(
        replace(spec, max_replicas=int(cap)) if raised else spec
        for spec, cap, raised in zip(table.specs, caps, raise_cap, strict=True)
    )
    return replace(table, specs=specs, max_replicas=caps)


def _need(trace: TickTrace, table: ModelTable) -> IntArray:
    need = replicas_for_rate(trace.counts / trace.dt_s, table.replica_rps[:, None])
    result: IntArray = np.maximum(need, (trace.counts > 0).astype(np.int64))
    return result


def default_budget_gb(trace: TickTrace, table: ModelTable) -> float:
    """The documented default budget: 1.25 x the peak of the 10-minute working set."""
    dt = trace.dt_s
    need = _need(trace, table)
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


def _budget(bench: BenchInput, budget_gb: float | None) -> float:
    budget = bench.default_budget_gb if budget_gb is None else budget_gb
    if not (budget > 0 and math.isfinite(budget)):
        raise InvalidInput(f"--gpu-memory-budget must be a positive number of GB, got {budget}")
    return budget


def run_setting(
    bench: BenchInput,
    name: str,
    setting: Setting | None = None,
    *,
    budget_gb: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Run policy ``name`` at ``setting`` (default: its own) under ``budget_gb`` (default: the
    bench's); the prewarm policy's forecasts for the busiest models come with the result."""
    budget = _budget(bench, budget_gb)
    policy = make_policy(name, bench.trace, setting)
    if isinstance(policy, PrewarmPolicy):
        policy.log_busiest(bench.trace.counts)
    result = run_policy(bench, policy, budget_gb=budget, progress=progress)
    if isinstance(policy, PrewarmPolicy):
        log = policy.forecast_log
        result.forecasts = (log.models, log.times_s, log.predicted)
    return result


def run_bench(
    bench: BenchInput,
    policies: Sequence[str],
    *,
    budget_gb: float | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, SimResult]:
    """Run each named policy at its own setting; results by name, in the order given.
    ``progress(label, ticks)`` is told of each policy's ticks as they are replayed."""
    budget = _budget(bench, budget_gb)
    results: dict[str, SimResult] = {}
    for name in check_policy_names(policies):
        results[name] = run_setting(
            bench, name, budget_gb=budget, progress=_labelled(progress, name)
        )
    return results


def run_sweep(
    bench: BenchInput,
    policies: Sequence[str],
    *,
    budget_gb: float | None = None,
    done: Mapping[str, SimResult] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, list[CurvePoint]]:
    """Each named policy's curve: one point per setting of :func:`sweep_settings`, all under one
    budget. A policy's own setting reuses its run in ``done`` (same budget) when there is one."""
    budget = _budget(bench, budget_gb)
    curves: dict[str, list[CurvePoint]] = {}
    for name in check_policy_names(policies):
        own = default_setting(name)
        points: list[CurvePoint] = []
        for setting in sweep_settings(name):
            if done is not None and name in done and setting == own:
                result = done[name]
            else:
                label = f"{name} {setting.label}"
                result = run_setting(
                    bench, name, setting, budget_gb=budget, progress=_labelled(progress, label)
                )
            points.append(
                CurvePoint.from_summary(
                    result.summary(), label=setting.label, params=setting.params
                )
            )
        curves[name] = points
    return curves


def run_budget_sweep(
    bench: BenchInput,
    policies: Sequence[str],
    *,
    base_gb: float | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, list[CurvePoint]]:
    """Each named policy at its own setting under each of :data:`BUDGET_SWEEP_FACTORS` x
    ``base_gb`` (default: the bench's budget); one point per budget."""
    base = _budget(bench, base_gb)
    names = check_policy_names(policies)
    curves: dict[str, list[CurvePoint]] = {name: [] for name in names}
    for factor in BUDGET_SWEEP_FACTORS:
        budget = base * factor
        for name in names:
            label = f"{budget:,.0f} GB"
            result = run_setting(
                bench, name, budget_gb=budget, progress=_labelled(progress, f"{label} {name}")
            )
            curves[name].append(
                CurvePoint.from_summary(
                    result.summary(), label=label, params={"gpu_memory_budget_gb": budget}
                )
            )
    return curves


def _labelled(
    progress: Callable[[str, int], None] | None, label: str
) -> Callable[[int], None] | None:
    if progress is None:
        return None

    def tick(count: int) -> None:
        progress(label, count)

    return tick


def own_point(name: str, result: SimResult) -> CurvePoint:
    """The point of ``name``'s run at its own setting."""
    setting = default_setting(name)
    return CurvePoint.from_summary(result.summary(), label=setting.label, params=setting.params)


def matched_verdicts(ours: CurvePoint, curves: Mapping[str, Sequence[CurvePoint]]) -> list[Verdict]:
    """``ours`` against the curve of each baseline of :data:`~prewarm.sim.matched.TARGETS` in
    ``curves``, at ``ours``'s idle GPU GB-hours (in the targets' order)."""
    return [
        verdict(name, ours, curve=curves[name], share=share)
        for name, share in TARGETS.items()
        if name in curves
    ]


def serving_check(results: Mapping[str, SimResult]) -> str | None:
    """A warning when the oracle ran and waited longer than :data:`SERVING_OBJECTIVE_P99_S` at
    the 99th percentile: the cluster, not the policies, then makes the queues."""
    if "oracle" not in results:
        return None
    summary = results["oracle"].summary()
    if summary["wait_p99_s"] <= SERVING_OBJECTIVE_P99_S:
        return None
    return (
        f"the oracle waits {summary['wait_p99_s']:,.0f} s at p99 (queueing "
        f"{summary['queue_wait_p99_s']:,.0f} s), over the {SERVING_OBJECTIVE_P99_S:g} s serving "
        "objective: this cluster cannot serve the trace's peak, and its queues dominate every "
        "policy's waits; raise --gpu-memory-budget or the catalog's max_replicas"
    )


def ratio(ours: float, theirs: float) -> float:
    """``ours / theirs``: 1 when both are 0 (the same), ``inf`` when only ``theirs`` is."""
    if theirs > 0:
        return ours / theirs
    return 1.0 if ours == 0 else math.inf


def comparison_lines(results: dict[str, SimResult], *, ours: str = "prewarm") -> list[str]:
    """One line per other policy: ``ours``'s cold starts, idle GPU memory and GPU node-hours
    relative to it, each at its own setting (empty when ``ours`` did not run or ran alone).

    Node-hours are given as both figures and their ratio: fewer cold starts bought with more
    nodes is a cost the other two ratios do not show.
    """
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
        lines.append(
            f"{ours} vs {name}: {cold_text}, {idle:.2f}x the idle GPU GB-hours, "
            f"{_node_hours(mine['gpu_node_hours'], theirs['gpu_node_hours'])}"
        )
    return lines


def _node_hours(mine: float, theirs: float) -> str:
    """``1.59x the GPU node-hours (104.0 vs 65.6)``."""
    return f"{ratio(mine, theirs):.2f}x the GPU node-hours ({mine:,.1f} vs {theirs:,.1f})"


def bench_document(
    bench: BenchInput,
    results: dict[str, SimResult],
    *,
    budget_gb: float | None = None,
) -> dict[str, object]:
    """The ``prewarm bench --json`` document: the trace, the budget and each policy's summary
    (the CLI adds ``sweep``, ``matched_memory``, ``budget_sweep`` when asked for them)."""
    return {
        "trace": bench.name,
        "requests": bench.trace.requests,
        "models": len(bench.trace.models),
        "gpu_memory_budget_gb": _budget(bench, budget_gb),
        "policies": {name: result.summary() for name, result in results.items()},
    }


def curves_json(curves: Mapping[str, Sequence[CurvePoint]]) -> dict[str, list[dict[str, object]]]:
    """Curves as the JSON carries them."""
    return {name: [point.to_json() for point in points] for name, points in curves.items()}
