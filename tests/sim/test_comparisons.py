"""prewarm against the other policies: the development-set bench's verdicts against issue 3's
targets (benchmarks/bench_traces.py) and the comparison lines ``prewarm bench`` prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from common.ids import ModelId
from prewarm.sim.bench import comparison_lines
from prewarm.sim.engine import WAIT_EDGES, SimResult


def _bench_traces() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_traces.py"
    spec = importlib.util.spec_from_file_location("bench_traces", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _s(cold: float, idle: float) -> dict[str, float]:
    return {"cold_start_ratio": cold, "idle_gpu_gb_hours": idle}


@pytest.mark.parametrize(
    ("ours", "theirs", "share", "expected"),
    [
        # hybrid-histogram: at most half its cold-start ratio, no more idle memory
        (_s(0.000196, 54_882), _s(0.000376, 80_253), 0.5, "misses"),  # 0.52x
        (_s(0.000188, 80_253), _s(0.000376, 80_253), 0.5, "meets"),
        (_s(0.000100, 80_254), _s(0.000376, 80_253), 0.5, "misses"),
        # keepalive-10m, tyche: less of both
        (_s(0.000196, 54_882), _s(0.00163, 55_368), 1.0, "meets"),
        (_s(0.000191, 309_329), _s(0.00194, 278_815), 1.0, "misses"),
        (_s(0.0, 50.0), _s(0.0, 61.0), 1.0, "meets"),
        # nobody has a cold start and the memory is the same: nothing to win
        (_s(0.0, 9.433), _s(0.0, 9.431), 1.0, "tie"),
        (_s(0.0, 61.02), _s(0.0, 61.02), 0.5, "tie"),
    ],
)
def test_verdicts(
    ours: dict[str, float], theirs: dict[str, float], share: float, expected: str
) -> None:
    assert _bench_traces().verdict(ours, theirs, share) == expected


def test_ratio_rows_cover_the_baselines_present() -> None:
    module = _bench_traces()
    rows = module.ratio_rows(
        {
            "prewarm": _s(0.0002, 100.0),
            "tyche": _s(0.002, 200.0),
            "hybrid-histogram": _s(0.0, 50.0),
            "reactive": _s(0.01, 10.0),
        }
    )
    assert [row[0] for row in rows] == ["hybrid-histogram", "tyche"]
    assert rows[0][1] == float("inf")
    assert rows[0][4] == "misses"
    assert rows[1][1:3] == [pytest.approx(0.1), pytest.approx(0.5)]
    assert rows[1][4] == "meets"
    assert module.ratio_rows({"tyche": _s(0.1, 1.0)}) == []


def _result(name: str, cold: float, idle_gb_hours: float) -> SimResult:
    return SimResult(
        policy=name,
        models=(ModelId("m"),),
        requests=np.array([1000], np.int64),
        cold=np.array([cold]),
        wait_hist=np.zeros(len(WAIT_EDGES) - 1),
        idle_gb_s=idle_gb_hours * 3600.0,
        node_s=0.0,
        overflow_gb_s=0.0,
        scored_s=3600.0,
        held_gb_s=0.0,
    )


def test_prewarm_bench_states_prewarm_against_each_other_policy() -> None:
    results = {
        "keepalive-10m": _result("keepalive-10m", 40.0, 200.0),
        "prewarm": _result("prewarm", 4.0, 150.0),
        "oracle": _result("oracle", 0.0, 100.0),
        "reactive": _result("reactive", 0.0, 150.0),
    }
    assert comparison_lines(results) == [
        "prewarm vs keepalive-10m: 0.10x the cold-start ratio, 0.75x the idle GPU GB-hours",
        "prewarm vs oracle: cold starts where oracle has none, 1.50x the idle GPU GB-hours",
        "prewarm vs reactive: cold starts where reactive has none, 1.00x the idle GPU GB-hours",
    ]
    results["prewarm"] = _result("prewarm", 0.0, 150.0)
    assert comparison_lines(results)[2] == (
        "prewarm vs reactive: no cold starts for either, 1.00x the idle GPU GB-hours"
    )
    assert comparison_lines({"oracle": results["oracle"]}) == []
