"""Each policy's sweep (prewarm.sim.policies) and what the bench runs with it
(prewarm.sim.bench): the settings, the reuse of the policy's own run, the default cluster's
replica caps and the serving objective."""

from __future__ import annotations

import numpy as np
import pytest

from common.ids import ModelId
from planner.catalog import Catalog, default_spec
from prewarm.sim.bench import (
    SERVING_OBJECTIVE_P99_S,
    BenchInput,
    cap_for_peak,
    default_budget_gb,
    peak_replicas,
    run_bench,
    run_budget_sweep,
    run_sweep,
    serving_check,
)
from prewarm.sim.cluster import build_model_table
from prewarm.sim.engine import to_ticks
from prewarm.sim.policies import (
    POLICY_NAMES,
    default_setting,
    make_policy,
    sweep_settings,
)
from prewarm.sim.policies.base import TARGET_UTILIZATION
from prewarm.sim.policies.baselines import HybridHistogramPolicy, KeepAlivePolicy, TychePolicy
from tests.sim.helpers import CLUSTER, batch, catalog, intermittent, spec


def _bench(series, models: Catalog, *, capped: bool = True) -> BenchInput:  # type: ignore[no-untyped-def]
    trace = to_ticks(series, seed=0)
    table = build_model_table(trace.models, models, CLUSTER)
    if capped:
        table = cap_for_peak(trace, table)
    return BenchInput("test", trace, table, CLUSTER, default_budget_gb(trace, table), 0, 0)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_sweep_holds_the_policys_own_setting(name: str) -> None:
    settings = sweep_settings(name)
    assert default_setting(name) in settings
    assert len({s.label for s in settings}) == len(settings)
    expected = 1 if name in ("reactive", "oracle") else 5
    assert len(settings) == expected


def test_settings_build_the_policies_they_name() -> None:
    trace = to_ticks(batch({"a": [1.0]}), seed=0)
    keep = [make_policy("keepalive-10m", trace, s) for s in sweep_settings("keepalive-10m")]
    assert [p.keep_s for p in keep if isinstance(p, KeepAlivePolicy)] == [
        300.0,
        600.0,
        1200.0,
        1800.0,
        3600.0,
    ]
    assert [p.name for p in keep][1] == "keepalive-10m"
    hybrid = make_policy("hybrid-histogram", trace, sweep_settings("hybrid-histogram")[0])
    assert isinstance(hybrid, HybridHistogramPolicy)
    assert (hybrid.head, hybrid.tail) == (25.0, 75.0)
    tyche = make_policy("tyche", trace, sweep_settings("tyche")[-1])
    assert isinstance(tyche, TychePolicy)
    assert (tyche.p_load, tyche.p_offload) == (0.01, 0.99)
    prewarm = make_policy("prewarm", trace, sweep_settings("prewarm")[0])
    assert prewarm.name == "prewarm"
    assert make_policy("oracle", trace, default_setting("oracle")).name == "oracle"
    with pytest.raises(KeyError):
        sweep_settings("lambda")


def test_a_sweep_reuses_each_policys_own_run_and_orders_its_points() -> None:
    bench = _bench(intermittent(9, 240, seed=1), Catalog())
    names = ["keepalive-10m", "tyche", "oracle"]
    results = run_bench(bench, names)
    runs: list[str] = []

    def progress(label: str, ticks: int) -> None:
        if label not in runs:
            runs.append(label)

    curves = run_sweep(bench, names, done=results, progress=progress)
    assert [p.label for p in curves["keepalive-10m"]] == [
        s.label for s in sweep_settings("keepalive-10m")
    ]
    assert len(curves["oracle"]) == 1
    # The policies' own settings come from ``done``: 4 + 4 new runs, none for the oracle.
    assert len(runs) == 8
    assert "keepalive-10m keep 10 min" not in runs
    own = curves["keepalive-10m"][1]
    assert own.cold_start_ratio == results["keepalive-10m"].summary()["cold_start_ratio"]
    # A longer keep-alive never holds less idle memory.
    idle = [p.idle_gpu_gb_hours for p in curves["keepalive-10m"]]
    assert idle == sorted(idle)
    budgets = run_budget_sweep(bench, ["keepalive-10m"])
    assert [p.params["gpu_memory_budget_gb"] for p in budgets["keepalive-10m"]] == pytest.approx(
        [f * bench.default_budget_gb for f in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)]
    )


def _busy_trace() -> tuple[object, str, float]:
    """A model the catalog does not list whose peak needs 1,500 replicas (the default cap is
    1,000), after a quiet hour."""
    model = "busy"
    rps = default_spec(ModelId(model)).replica_rps
    peak_per_min = 1_500 * rps * TARGET_UTILIZATION * 60.0
    counts = [60.0] * 60 + [peak_per_min] * 20 + [60.0] * 10
    return batch({model: counts}), model, rps


def test_the_default_cluster_scales_an_unlisted_model_to_its_peak() -> None:
    series, _, _ = _busy_trace()
    capped = _bench(series, Catalog())
    assert int(peak_replicas(capped.trace, capped.table)[0]) == 1_500
    assert int(capped.table.max_replicas[0]) == 1_500
    assert capped.table.specs[0].max_replicas == 1_500
    oracle = run_bench(capped, ["oracle"])
    assert oracle["oracle"].summary()["wait_p99_s"] <= SERVING_OBJECTIVE_P99_S
    assert serving_check(oracle) is None
    # With the catalog's default cap of 1,000 the peak queues even for the oracle.
    stuck = run_bench(_bench(series, Catalog(), capped=False), ["oracle"])
    assert stuck["oracle"].summary()["queue_wait_p99_s"] > SERVING_OBJECTIVE_P99_S
    warning = serving_check(stuck)
    assert warning is not None
    assert "serving objective" in warning
    assert serving_check({}) is None


def test_a_listed_model_keeps_its_catalogs_cap() -> None:
    series, model, rps = _busy_trace()
    listed = catalog(spec(model, replica_rps=rps, max_replicas=7))
    bench = _bench(series, listed)
    assert int(bench.table.max_replicas[0]) == 7
    assert bench.table.specs[0].max_replicas == 7
    quiet = _bench(batch({"q": [1.0, 0.0, 2.0]}), Catalog())
    assert np.array_equal(quiet.table.max_replicas, [1_000])
