"""The development-set bench: every policy on every trace, with the total wall time.

    .venv/bin/python benchmarks/bench_traces.py [--traces DIR] [--policies a,b] [--jobs N]
                                                [--json OUT]

Runs what ``prewarm bench --trace F`` runs (default budget, seed 0) for each ``*.csv`` in the
directory (default ``../shared/traces`` next to the repository), one (trace, policy) pair per task
on ``--jobs`` worker processes (default 2), and prints one table per trace, then prewarm's ratios
against each baseline measured in the same run with issue 3's target for each (hybrid-histogram:
at most half its cold-start ratio and no more idle memory; keepalive-10m and tyche: less of both),
and the total time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from planner.catalog import Catalog  # noqa: E402
from prewarm.cli.output import print_table  # noqa: E402
from prewarm.sim.bench import load_bench_input, ratio, run_bench  # noqa: E402
from prewarm.sim.engine import SUMMARY_FIELDS  # noqa: E402
from prewarm.sim.policies import POLICY_NAMES  # noqa: E402

FIELDS = SUMMARY_FIELDS
TARGETS = {"hybrid-histogram": 0.5, "keepalive-10m": 1.0, "tyche": 1.0}
"""Baseline -> the largest share of its cold-start ratio prewarm may have (issue 3)."""
TIE_TOLERANCE = 0.001
"""Idle memory within this share of the baseline's, with no cold starts for either: a tie."""


def verdict(ours: dict[str, float], theirs: dict[str, float], cold_share: float) -> str:
    """Whether ``ours`` meets the target against ``theirs``: ``meets``, ``misses`` or ``tie``.

    ``cold_share`` < 1 asks for at most that share of their cold-start ratio and no more idle
    memory; 1 asks for less of both (no cold starts against none counts as less). Neither policy
    with a cold start and idle memory within :data:`TIE_TOLERANCE` is a tie: nothing to win.
    """
    cold, idle = ours["cold_start_ratio"], ours["idle_gpu_gb_hours"]
    their_cold, their_idle = theirs["cold_start_ratio"], theirs["idle_gpu_gb_hours"]
    if cold == 0 and their_cold == 0 and abs(ratio(idle, their_idle) - 1.0) <= TIE_TOLERANCE:
        return "tie"
    if cold_share < 1.0:
        met = cold <= cold_share * their_cold and idle <= their_idle
    else:
        met = (cold < their_cold or cold == their_cold == 0) and idle < their_idle
    return "meets" if met else "misses"


def ratio_rows(summaries: dict[str, dict[str, float]]) -> list[list[object]]:
    """prewarm against each baseline of :data:`TARGETS` present in ``summaries``."""
    if "prewarm" not in summaries:
        return []
    ours = summaries["prewarm"]
    rows: list[list[object]] = []
    for baseline, share in TARGETS.items():
        if baseline not in summaries:
            continue
        theirs = summaries[baseline]
        rows.append(
            [
                baseline,
                ratio(ours["cold_start_ratio"], theirs["cold_start_ratio"]),
                ratio(ours["idle_gpu_gb_hours"], theirs["idle_gpu_gb_hours"]),
                f"cold <= {share:g}x, idle <= 1x" if share < 1 else "cold < 1x, idle < 1x",
                verdict(ours, theirs, share),
            ]
        )
    return rows


def _one(trace: str, policy: str) -> tuple[str, str, dict[str, float], float, dict[str, object]]:
    started = time.perf_counter()
    cpu_started = time.process_time()
    bench = load_bench_input(Path(trace), Catalog())
    result = run_bench(bench, [policy])[policy]
    info: dict[str, object] = {
        "requests": bench.trace.requests,
        "models": len(bench.trace.models),
        "budget_gb": bench.default_budget_gb,
        "cpu_s": time.process_time() - cpu_started,
    }
    return trace, policy, result.summary(), time.perf_counter() - started, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    traces = sorted(str(path) for path in args.traces.glob("*.csv"))
    policies = [name for name in args.policies.split(",") if name]
    started = time.perf_counter()
    tasks = [(trace, policy) for trace in traces for policy in policies]
    # Longest first (the prewarm policy and the long traces), so the workers finish together.
    tasks.sort(key=lambda item: (item[1] != "prewarm", -Path(item[0]).stat().st_size))
    outcomes = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_one, trace, policy) for trace, policy in tasks]
        for future in futures:
            outcomes.append(future.result())
    total = time.perf_counter() - started
    cpu_total = sum(float(str(o[4]["cpu_s"])) for o in outcomes)
    document: dict[str, object] = {
        "total_wall_s": total,
        "total_cpu_s": cpu_total,
        "jobs": args.jobs,
        "traces": {},
    }
    for trace in traces:
        rows = []
        summaries: dict[str, dict[str, float]] = {}
        per_trace: dict[str, object] = {"trace": Path(trace).name, "policies": {}}
        for policy in policies:
            match = next(o for o in outcomes if o[0] == trace and o[1] == policy)
            _, _, summary, seconds, info = match
            summaries[policy] = summary
            cpu = info.pop("cpu_s")
            per_trace.update(info)
            per_trace["policies"][policy] = {  # type: ignore[index]
                **summary,
                "wall_s": seconds,
                "cpu_s": cpu,
            }
            rows.append([policy, *(summary[field] for field in FIELDS), seconds, cpu])
        document["traces"][Path(trace).name] = per_trace  # type: ignore[index]
        title = (
            f"{Path(trace).name}: {per_trace['requests']:,} requests, {per_trace['models']} "
            f"models, budget {per_trace['budget_gb']:,.0f} GB"
        )
        print_table(title, ("policy", *FIELDS, "wall_s", "cpu_s"), rows)
        ratios = ratio_rows(summaries)
        if ratios:
            print_table(
                f"{Path(trace).name}: prewarm / baseline, same run",
                ("baseline", "cold_start_ratio", "idle_gpu_gb_hours", "target", "verdict"),
                ratios,
            )
            per_trace["prewarm_vs"] = {
                row[0]: {"cold_start_ratio": row[1], "idle_gpu_gb_hours": row[2], "verdict": row[4]}
                for row in ratios
            }
    print(
        f"total wall time: {total:.1f} s on {args.jobs} worker process(es); "
        f"CPU time of all runs: {cpu_total:.1f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
