"""The development-set bench: every policy on every trace, the verdict at matched memory, the time.

    .venv/bin/python benchmarks/bench_traces.py [--traces DIR] [--policies a,b] [--jobs N]
                                                [--sweep-prewarm] [--json OUT]

Runs what ``prewarm bench --trace F --sweep`` runs (default budget, seed 0) for each ``*.csv`` in
the directory (default ``../shared/traces`` next to the repository): every policy at its own
setting, and each baseline (keepalive-10m, hybrid-histogram, tyche) at every setting of its
documented sweep (``prewarm.sim.policies``); prewarm only at its own setting unless
``--sweep-prewarm`` (its runs cost 5-10x a baseline's). One (trace, policy) pair per task, all of
its settings in one worker process, on ``--jobs`` processes (default 2). Per trace it prints the
table at each policy's own setting, the baselines' curves, and prewarm against each baseline at
prewarm's idle GPU GB-hours, read off the baseline's curve measured in the same run
(``prewarm.sim.matched``: target, verdict, wait p99 beside it); then the total time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from planner.catalog import Catalog  # noqa: E402
from prewarm.cli.output import dumps_json, print_table  # noqa: E402
from prewarm.sim.bench import (  # noqa: E402
    SERVING_OBJECTIVE_P99_S,
    curves_json,
    load_bench_input,
    matched_verdicts,
    run_setting,
)
from prewarm.sim.engine import SUMMARY_FIELDS  # noqa: E402
from prewarm.sim.matched import CURVE_COLUMNS as MATCHED_CURVE_COLUMNS  # noqa: E402
from prewarm.sim.matched import CurvePoint, Verdict, verdict_json, verdict_line  # noqa: E402
from prewarm.sim.policies import POLICY_NAMES, default_setting, sweep_settings  # noqa: E402

FIELDS = SUMMARY_FIELDS
CURVE_COLUMNS = (*MATCHED_CURVE_COLUMNS, "wall_s")
RUN_COST = {"prewarm": 6.0, "hybrid-histogram": 1.8, "tyche": 1.5}
"""Rough cost of one run relative to keepalive's on the same trace (for scheduling only)."""


@dataclass(frozen=True, slots=True)
class Run:
    """One policy at one setting on one trace."""

    label: str
    params: dict[str, float]
    summary: dict[str, float]
    wall_s: float
    cpu_s: float
    own: bool
    """The policy's own setting (the one ``prewarm bench`` runs without ``--sweep``)."""


@dataclass(frozen=True, slots=True)
class Task:
    """Every run of one policy on one trace, in one worker."""

    trace: str
    policy: str
    runs: tuple[Run, ...]
    info: dict[str, float]


def _task(trace: str, policy: str, sweep: bool) -> Task:
    bench = load_bench_input(Path(trace), Catalog())
    own = default_setting(policy)
    runs = []
    for setting in sweep_settings(policy) if sweep else (own,):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run_setting(bench, policy, setting)
        runs.append(
            Run(
                label=setting.label,
                params=dict(setting.params),
                summary=result.summary(),
                wall_s=time.perf_counter() - started,
                cpu_s=time.process_time() - cpu_started,
                own=setting == own,
            )
        )
    info = {
        "requests": float(bench.trace.requests),
        "models": float(len(bench.trace.models)),
        "budget_gb": bench.default_budget_gb,
    }
    return Task(trace, policy, tuple(runs), info)


def curves_of(tasks: Sequence[Task]) -> dict[str, list[CurvePoint]]:
    """Each policy's curve from its runs on one trace."""
    return {
        task.policy: [
            CurvePoint.from_summary(run.summary, label=run.label, params=run.params)
            for run in task.runs
        ]
        for task in tasks
    }


def own_runs(tasks: Sequence[Task]) -> dict[str, Run]:
    """Each policy's run at its own setting."""
    return {task.policy: next(run for run in task.runs if run.own) for task in tasks}


def trace_verdicts(tasks: Sequence[Task]) -> list[Verdict]:
    """prewarm at its own setting against each baseline's curve, all from one trace's tasks."""
    own = own_runs(tasks)
    if "prewarm" not in own:
        return []
    run = own["prewarm"]
    ours = CurvePoint.from_summary(run.summary, label=run.label, params=run.params)
    return matched_verdicts(ours, curves_of([t for t in tasks if t.policy != "prewarm"]))


def _report(trace: str, tasks: Sequence[Task]) -> dict[str, object]:
    """Print one trace's tables and lines; return its JSON."""
    name = Path(trace).name
    info = tasks[0].info
    own = own_runs(tasks)
    rows = [
        [
            task.policy,
            *(own[task.policy].summary[field] for field in FIELDS),
            len(task.runs),
            sum(run.wall_s for run in task.runs),
            sum(run.cpu_s for run in task.runs),
        ]
        for task in tasks
    ]
    print_table(
        f"{name}: {info['requests']:,.0f} requests, {info['models']:.0f} models, budget "
        f"{info['budget_gb']:,.0f} GB; each policy at its own setting",
        ("policy", *FIELDS, "runs", "wall_s", "cpu_s"),
        rows,
    )
    swept = [task for task in tasks if len(task.runs) > 1]
    if swept:
        print_table(
            f"{name}: curves (each setting of the policy's sweep)",
            CURVE_COLUMNS,
            [
                [
                    task.policy,
                    run.label,
                    *(
                        run.summary[field]
                        for field in (
                            "cold_start_ratio",
                            "idle_gpu_gb_hours",
                            "wait_p99_s",
                            "cold_wait_p99_s",
                            "queue_wait_p99_s",
                        )
                    ),
                    run.wall_s,
                ]
                for task in swept
                for run in task.runs
            ],
        )
    verdicts = trace_verdicts(tasks)
    for matched in verdicts:
        print(verdict_line(matched))
    document: dict[str, object] = {
        "trace": name,
        "requests": int(info["requests"]),
        "models": int(info["models"]),
        "budget_gb": info["budget_gb"],
        "policies": {
            task.policy: {
                **own[task.policy].summary,
                "runs": len(task.runs),
                "wall_s": sum(run.wall_s for run in task.runs),
                "cpu_s": sum(run.cpu_s for run in task.runs),
            }
            for task in tasks
        },
        "curves": curves_json(curves_of(swept)),
        "matched_memory": {v.baseline: verdict_json(v) for v in verdicts},
    }
    if "oracle" in own:
        oracle = own["oracle"].summary["wait_p99_s"]
        met = oracle <= SERVING_OBJECTIVE_P99_S
        print(
            f"{name}: oracle wait p99 {oracle:.3g} s, serving objective "
            f"{SERVING_OBJECTIVE_P99_S:g} s: {'met' if met else 'MISSED'}"
        )
        document["serving_objective"] = {
            "wait_p99_s": SERVING_OBJECTIVE_P99_S,
            "oracle_wait_p99_s": oracle,
            "met": met,
        }
    return document


def _cost(trace: str, policy: str, sweep: bool) -> float:
    runs = len(sweep_settings(policy)) if sweep else 1
    return Path(trace).stat().st_size * runs * RUN_COST.get(policy, 1.0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--sweep-prewarm", action="store_true", help="Sweep prewarm's idle price too (slow)."
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    traces = sorted(str(path) for path in args.traces.glob("*.csv"))
    policies = [name for name in args.policies.split(",") if name]
    started = time.perf_counter()
    sweeps: Mapping[str, bool] = {p: p != "prewarm" or args.sweep_prewarm for p in policies}
    pairs = [(trace, policy) for trace in traces for policy in policies]
    # Longest first (prewarm, sweeps, the long traces), so the workers finish together.
    pairs.sort(key=lambda pair: -_cost(pair[0], pair[1], sweeps[pair[1]]))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_task, trace, policy, sweeps[policy]) for trace, policy in pairs]
        done = [future.result() for future in futures]
    total = time.perf_counter() - started
    runs = sum(len(task.runs) for task in done)
    cpu_total = sum(run.cpu_s for task in done for run in task.runs)
    document: dict[str, object] = {
        "total_wall_s": total,
        "total_cpu_s": cpu_total,
        "runs": runs,
        "jobs": args.jobs,
        "traces": {},
    }
    per_trace: dict[str, object] = {}
    for trace in traces:
        order = {policy: k for k, policy in enumerate(policies)}
        tasks = sorted((t for t in done if t.trace == trace), key=lambda t: order[t.policy])
        per_trace[Path(trace).name] = _report(trace, tasks)
    document["traces"] = per_trace
    print(
        f"total wall time: {total:.1f} s on {args.jobs} worker process(es), {runs} runs; "
        f"CPU time of all runs: {cpu_total:.1f} s"
    )
    if args.json is not None:
        args.json.write_text(dumps_json(document) + "\n")


if __name__ == "__main__":
    main()
