from __future__ import annotations

import numpy as np
import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from planner.catalog import Catalog
from prewarm.sim.bench import BenchInput, default_budget_gb, run_bench
from prewarm.sim.cluster import build_model_table
from prewarm.sim.engine import Simulator, tick_width_s, to_ticks
from prewarm.sim.policies import POLICY_NAMES, make_policy
from prewarm.sim.policies.baselines import KeepAlivePolicy, ReactivePolicy
from tests.sim.helpers import CLUSTER, batch, catalog, intermittent, spec


def _bench(series, models: Catalog, *, seed: int = 0, warmup: int = 0) -> BenchInput:  # type: ignore[no-untyped-def]
    trace = to_ticks(series, seed=seed)
    table = build_model_table(trace.models, models, CLUSTER)
    return BenchInput(
        name="test",
        trace=trace,
        table=table,
        cluster=CLUSTER,
        default_budget_gb=default_budget_gb(trace, table),
        warmup_ticks=warmup,
        seed=seed,
    )


def test_hand_computed_cold_starts_and_waits() -> None:
    # One model; requests at minute 0, minute 2 and minute 60.
    counts = [0.0] * 61
    counts[0] = counts[2] = counts[60] = 1.0
    model = spec("m", weights_gb=10.0, image_gb=2.0, compile_s=10.0, replica_rps=100.0)
    bench = _bench(batch({"m": counts}), catalog(model))
    result = run_bench(bench, ["keepalive-10m"], budget_gb=100.0)["keepalive-10m"]
    # Minute 0: nothing anywhere. Image 2 GB at 1 GB/s, container 5 s, weights remote 10 GB at
    # 1 GB/s then 10 GB host->GPU at 10 GB/s, full compile 10 s: 2 + 5 + 11 + 10 = 28 s.
    # Minute 2: kept alive (10 minutes), warm. Minute 60: the keep-alive has lapsed; image and
    # weights are on the node: 5 + (10/2.5 + 10/10) + 10 x 0.25 = 12.5 s.
    assert result.total_requests == 3
    assert result.cold.sum() == 2
    assert result.cold_start_ratio() == pytest.approx(2 / 3)
    assert result.wait_quantile_s(0.99) == pytest.approx(28.0, rel=0.05)
    assert result.wait_quantile_s(0.5) == pytest.approx(12.5, rel=0.05)
    # Reactive waits for its next 30 s poll before starting, so its waits are longer.
    reactive = run_bench(bench, ["reactive"], budget_gb=100.0)["reactive"]
    assert reactive.cold.sum() == 2
    assert reactive.wait_quantile_s(0.99) > 28.0


def test_idle_memory_is_counted_only_without_requests_in_service() -> None:
    counts = [0.0] * 30
    counts[0] = 1.0
    model = spec("m", weights_gb=10.0, service_s=2.0, replica_rps=100.0)
    bench = _bench(batch({"m": counts}), catalog(model))
    keep = run_bench(bench, ["keepalive-10m"], budget_gb=100.0)["keepalive-10m"]
    # Held from the first minute for ~11 minutes (10 minutes of keep-alive after the request's
    # minute); almost all of it idle.
    assert 10.0 * 10 / 60 <= keep.summary()["idle_gpu_gb_hours"] <= 10.0 * 12.5 / 60


def test_same_seed_same_result_and_seed_matters_only_through_randomness() -> None:
    series = intermittent(12, 400, seed=3)
    first = run_bench(_bench(series, Catalog(), seed=7), ["hybrid-histogram", "tyche"])
    again = run_bench(_bench(series, Catalog(), seed=7), ["hybrid-histogram", "tyche"])
    for name in first:
        assert first[name].summary() == again[name].summary()
        assert np.array_equal(first[name].cold, again[name].cold)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_runs_and_reports_sane_numbers(name: str) -> None:
    bench = _bench(intermittent(9, 240, seed=1), Catalog(), warmup=30)
    result = run_bench(bench, [name])[name]
    summary = result.summary()
    assert set(summary) == {
        "cold_start_ratio",
        "cold_start_p75_per_model",
        "wait_p50_s",
        "wait_p99_s",
        "cold_wait_p99_s",
        "queue_wait_p99_s",
        "idle_gpu_gb_hours",
        "gpu_node_hours",
    }
    assert 0.0 <= summary["cold_start_ratio"] <= 1.0
    assert 0.0 <= summary["cold_start_p75_per_model"] <= 1.0
    assert summary["wait_p50_s"] <= summary["wait_p99_s"]
    assert summary["idle_gpu_gb_hours"] >= 0.0
    assert summary["gpu_node_hours"] > 0.0
    assert result.total_requests == int(bench.trace.counts[:, 30:].sum())


def test_oracle_is_a_bound_on_cold_starts() -> None:
    bench = _bench(intermittent(12, 360, seed=5), Catalog(), warmup=20)
    results = run_bench(bench, list(POLICY_NAMES))
    oracle = results["oracle"].cold.sum()
    assert oracle == 0
    for result in results.values():
        assert oracle <= result.cold.sum()


def test_tick_grid_splits_and_sums_deterministically() -> None:
    assert tick_width_s(600.0) == 60.0
    assert tick_width_s(60.0) == 60.0
    assert tick_width_s(1.0) == 10.0
    coarse = batch({"a": [100.0, 7.0]})
    coarse = type(coarse)(models=coarse.models, start_s=0.0, step_s=600.0, counts=coarse.counts)
    ticks = to_ticks(coarse, seed=1)
    assert ticks.counts.shape == (1, 20)
    assert ticks.counts[0, :10].sum() == 100
    assert ticks.counts[0, 10:].sum() == 7
    assert np.array_equal(ticks.counts, to_ticks(coarse, seed=1).counts)


def test_bad_inputs() -> None:
    bench = _bench(batch({"a": [1.0, 0.0, 1.0]}), Catalog())
    with pytest.raises(InvalidInput, match="unknown policy"):
        run_bench(bench, ["reactive", "lambda"])
    with pytest.raises(InvalidInput, match="positive"):
        run_bench(bench, ["reactive"], budget_gb=-1.0)
    with pytest.raises(InvalidInput, match="> 0 GB"):
        Simulator(bench.trace, bench.table, CLUSTER, budget_gb=0.0, warmup_ticks=0, seed=0)


def test_budget_is_shared_and_evicts_the_least_recently_used() -> None:
    # Two 10 GB models alternate under a 10 GB budget: every switch evicts the other one.
    a = [1.0 if k % 4 == 0 else 0.0 for k in range(40)]
    b = [1.0 if k % 4 == 2 else 0.0 for k in range(40)]
    models = catalog(spec("a", weights_gb=10.0), spec("b", weights_gb=10.0))
    bench = _bench(batch({"a": a, "b": b}), models)
    tight = run_bench(bench, ["keepalive-10m"], budget_gb=10.0)["keepalive-10m"]
    loose = run_bench(bench, ["keepalive-10m"], budget_gb=20.0)["keepalive-10m"]
    assert tight.cold.sum() > loose.cold.sum() == 2
    assert tight.overflow_gb_s == 0.0
    policy = KeepAlivePolicy(60.0, name="k1")
    assert policy.name == "k1"
    assert ReactivePolicy().activation_delay_s(10.0) == pytest.approx(20.0)
    assert make_policy("oracle", bench.trace).name == "oracle"
    assert ModelId("a") in bench.trace.models


def test_waits_are_split_into_cold_starts_and_queueing() -> None:
    # A first request (cold), then an hour at 1 request/s on one replica of 2 requests/s, then a
    # minute at 10 requests/s: the burst queues on the ready replica while the scaler adds more.
    counts = [1.0] + [60.0] * 60 + [600.0] + [60.0] * 10
    model = spec("m", weights_gb=10.0, image_gb=2.0, compile_s=10.0, replica_rps=2.0)
    bench = _bench(batch({"m": counts}), catalog(model))
    result = run_bench(bench, ["keepalive-10m"], budget_gb=1000.0)["keepalive-10m"]
    summary = result.summary()
    # Each request waits for one cause: the combined histogram is the two causes' plus no-waits.
    assert np.allclose(result.wait_hist[1:], result.cold_wait_hist[1:] + result.queue_wait_hist[1:])
    assert result.cold_wait_hist.sum() == pytest.approx(result.cold.sum())
    assert result.wait_hist.sum() == pytest.approx(result.total_requests)
    # 22 of 4,801 requests came during the first start: under 1 %, so cold-start waits do not
    # reach the p99 and queueing makes all of it.
    assert summary["cold_wait_p99_s"] == 0.0
    assert summary["queue_wait_p99_s"] > 1.0
    assert summary["wait_p99_s"] == summary["queue_wait_p99_s"]
    assert result.cold_wait_quantile_s(1.0) == pytest.approx(28.0, rel=0.05)
