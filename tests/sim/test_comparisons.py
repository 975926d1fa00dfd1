"""prewarm against the other policies: the development-set bench's verdicts at matched memory
(benchmarks/bench_traces.py) and the comparison lines ``prewarm bench`` prints."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from common.ids import ModelId
from prewarm.sim.bench import comparison_lines
from prewarm.sim.engine import WAIT_EDGES, SimResult


@functools.cache
def _bench_traces() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_traces.py"
    spec = importlib.util.spec_from_file_location("bench_traces", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up by name while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(label: str, cold: float, idle: float, *, own: bool = False, wait: float = 0.0) -> object:
    summary = {
        "cold_start_ratio": cold,
        "idle_gpu_gb_hours": idle,
        "wait_p99_s": wait,
        "cold_wait_p99_s": 0.0,
        "queue_wait_p99_s": wait,
    }
    return _bench_traces().Run(label, {}, summary, 1.0, 1.0, own)


def _task(policy: str, *runs: object) -> object:
    return _bench_traces().Task("t.csv", policy, tuple(runs), {})


def test_the_development_bench_reads_each_baseline_at_prewarms_idle_memory() -> None:
    module = _bench_traces()
    tasks = [
        _task("reactive", _run("default", 0.01, 40_000.0, own=True)),
        _task(
            "keepalive-10m",
            _run("keep 5 min", 0.004, 48_000.0),
            _run("keep 10 min", 0.002, 56_000.0, own=True, wait=5.0),
        ),
        _task("tyche", _run("a", 0.003, 60_000.0, own=True), _run("b", 0.002, 70_000.0)),
        _task("prewarm", _run("idle_price 0.0004", 0.0002, 54_000.0, own=True, wait=1_000.0)),
    ]
    verdicts = module.trace_verdicts(tasks)
    # reactive has no target; tyche's leanest setting holds more than prewarm.
    assert [(v.baseline, v.outcome) for v in verdicts] == [
        ("keepalive-10m", "meets"),
        ("tyche", "beyond the curve"),
    ]
    # 54,000 is 3/4 of the way from 48,000 to 56,000: 0.004 - 0.75 x 0.002 = 0.0025.
    assert verdicts[0].matched is not None
    assert verdicts[0].matched.cold_start_ratio == pytest.approx(0.0025)
    assert verdicts[0].matched.wait_p99_s == pytest.approx(3.75)
    assert verdicts[0].cold_ratio == pytest.approx(0.08)
    assert module.trace_verdicts(tasks[:3]) == []
    assert list(module.curves_of(tasks)) == ["reactive", "keepalive-10m", "tyche", "prewarm"]


def _result(name: str, cold: float, idle_gb_hours: float, node_hours: float = 0.0) -> SimResult:
    return SimResult(
        policy=name,
        models=(ModelId("m"),),
        requests=np.array([1000], np.int64),
        cold=np.array([cold]),
        wait_hist=np.zeros(len(WAIT_EDGES) - 1),
        idle_gb_s=idle_gb_hours * 3600.0,
        node_s=node_hours * 3600.0,
        overflow_gb_s=0.0,
        scored_s=3600.0,
        held_gb_s=0.0,
    )


def test_prewarm_bench_states_prewarm_against_each_other_policy() -> None:
    results = {
        "keepalive-10m": _result("keepalive-10m", 40.0, 200.0, 80.0),
        "prewarm": _result("prewarm", 4.0, 150.0, 104.0),
        "oracle": _result("oracle", 0.0, 100.0, 88.6),
        "reactive": _result("reactive", 0.0, 150.0, 65.6),
    }
    # Every line carries the GPU node-hours, both figures and their ratio: fewer cold starts
    # bought with more nodes is a cost the other two ratios hide.
    assert comparison_lines(results) == [
        "prewarm vs keepalive-10m: 0.10x the cold-start ratio, 0.75x the idle GPU GB-hours, "
        "1.30x the GPU node-hours (104.0 vs 80.0)",
        "prewarm vs oracle: cold starts where oracle has none, 1.50x the idle GPU GB-hours, "
        "1.17x the GPU node-hours (104.0 vs 88.6)",
        "prewarm vs reactive: cold starts where reactive has none, 1.00x the idle GPU GB-hours, "
        "1.59x the GPU node-hours (104.0 vs 65.6)",
    ]
    results["prewarm"] = _result("prewarm", 0.0, 150.0, 65.6)
    assert comparison_lines(results)[2] == (
        "prewarm vs reactive: no cold starts for either, 1.00x the idle GPU GB-hours, "
        "1.00x the GPU node-hours (65.6 vs 65.6)"
    )
    assert comparison_lines({"oracle": results["oracle"]}) == []
