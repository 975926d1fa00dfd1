"""The Prometheus source against a real Prometheus, and against a fake that misbehaves on purpose.

Real server: history is backfilled with promtool from a synthetic batch; the source must yield the
same series as the file source. Fake: down, slow, 4xx/5xx, garbage and partial JSON give typed
errors after retries with backoff; the engine then still serves its last good forecasts, marked
stale, with no NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidInput, PermissionDenied, TemporaryError
from common.ids import ModelId
from forecaster.config import PrometheusSourceConfig
from forecaster.engine import AutoForecaster
from forecaster.sources.prometheus import PrometheusSource
from forecaster.sources.trace import read_trace
from forecaster.types import SeriesBatch
from tests.forecaster.conftest import PrometheusFactory, synthetic_batch, write_trace
from tests.forecaster.fake_prometheus import Behaviour, fake_prometheus
from tests.harness.prometheus import free_port

# Exact per-step counts from the backfilled counter (one sample at every step end).
EXACT_QUERY = "sum by (model) (inference_requests_total - inference_requests_total offset 1m) / 60"


def _source(
    url: str, *, history_window_s: float = 86400.0, **overrides: object
) -> tuple[PrometheusSource, list[float]]:
    sleeps: list[float] = []
    config = PrometheusSourceConfig.model_validate(
        {
            "url": url,
            "timeout_s": 2.0,
            "retries": 2,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            **overrides,
        }
    )
    source = PrometheusSource(config, history_window_s=history_window_s, sleep=sleeps.append)
    return source, sleeps


@pytest.mark.prometheus
def test_prometheus_source_yields_the_same_series_as_the_trace_file(
    prometheus_server: PrometheusFactory, tmp_path: Path
) -> None:
    batch = synthetic_batch(models=3, days=0.25, seed=3)
    from_file = read_trace(write_trace(batch, tmp_path / "trace.csv"))

    server = prometheus_server(batch)
    # Small chunks force several range queries (the 11,000-point limit, scaled down).
    source, _ = _source(server.url, query=EXACT_QUERY, max_points_per_query=100)
    from_prometheus = source.fetch(start_s=from_file.start_s, end_s=from_file.end_s)

    assert from_prometheus.models == from_file.models
    assert from_prometheus.start_s == from_file.start_s
    assert from_prometheus.steps == from_file.steps
    np.testing.assert_allclose(from_prometheus.counts, from_file.counts, atol=1e-6)


@pytest.mark.prometheus
def test_default_rate_query_and_incremental_polls(prometheus_server: PrometheusFactory) -> None:
    batch = synthetic_batch(models=2, days=0.1, seed=5)
    server = prometheus_server(batch)
    source, _ = _source(server.url, history_window_s=3600)
    end = batch.end_s
    first = source.poll(now_s=end - 1800)
    assert first.models == batch.models
    assert first.steps == 60
    second = source.poll(now_s=end)
    assert second.start_s == first.end_s  # only the new steps
    assert second.steps == 30
    # rate() over samples one minute apart needs two samples in its window: every step is
    # either missing (NaN) or a non-negative count close to the true one on average.
    values = second.counts[np.isfinite(second.counts)]
    assert values.size > 0
    assert np.all(values >= 0)


def test_unreachable_prometheus_is_a_temporary_error_after_retries() -> None:
    source, sleeps = _source(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TemporaryError, match="unreachable"):
        source.fetch(start_s=0, end_s=600)
    assert len(sleeps) == 2  # retries=2: two backoff sleeps, growing
    assert sleeps[0] <= sleeps[1] + 0.01


def test_slow_prometheus_times_out_with_retries() -> None:
    behaviour = Behaviour(answers=["stall"], stall_s=1.5)
    with fake_prometheus(behaviour) as url:
        source, sleeps = _source(url, timeout_s=0.3, retries=1)
        with pytest.raises(TemporaryError, match="did not answer within"):
            source.fetch(start_s=0, end_s=600)
    assert behaviour.requests == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("answer", "error", "attempts"),
    [
        ("status:500", TemporaryError, 3),
        ("status:503", TemporaryError, 3),
        ("status:429", TemporaryError, 3),
        ("status:400", InvalidInput, 1),
        ("status:403", PermissionDenied, 1),
        ("garbage", TemporaryError, 3),
        ("partial", TemporaryError, 3),
        ("no-data", TemporaryError, 3),
    ],
)
def test_bad_answers_are_typed_errors(answer: str, error: type[Exception], attempts: int) -> None:
    behaviour = Behaviour(answers=[answer])
    with fake_prometheus(behaviour) as url:
        source, _ = _source(url)
        with pytest.raises(error):
            source.fetch(start_s=0, end_s=600)
    assert behaviour.requests == attempts


def test_a_transient_failure_is_retried_then_succeeds() -> None:
    behaviour = Behaviour(answers=["status:502", "garbage", "ok"])
    with fake_prometheus(behaviour) as url:
        source, sleeps = _source(url)
        batch = source.fetch(start_s=0, end_s=600)
    assert batch.models == (ModelId("m1"),)
    np.testing.assert_allclose(batch.counts, 30.0)  # 0.5 req/s x 60 s
    assert len(sleeps) == 2


def test_range_queries_are_chunked_under_the_point_limit() -> None:
    behaviour = Behaviour(answers=["ok"])
    with fake_prometheus(behaviour) as url:
        source, _ = _source(url, max_points_per_query=1000)
        batch = source.fetch(start_s=0, end_s=2500 * 60)
    assert batch.steps == 2500
    assert behaviour.requests == 3
    for query in behaviour.queries:
        points = (float(query["end"][0]) - float(query["start"][0])) / 60 + 1
        assert points <= 1000
    assert np.all(np.isfinite(batch.counts))


def test_failed_poll_leaves_the_engine_with_its_last_good_forecasts_marked_stale() -> None:
    behaviour = Behaviour(answers=["ok", "status:500"])
    quantiles = (0.5, 0.9)
    with fake_prometheus(behaviour) as url:
        source, _ = _source(url, retries=1, history_window_s=6 * 3600)
        engine = AutoForecaster(step_s=60)
        now = 1_700_000_000.0 - (1_700_000_000.0 % 60)
        engine.observe(source.poll(now_s=now))
        good = engine.forecast(horizon_steps=10, quantiles=quantiles)
        assert set(good) == {ModelId("m1")}
        assert not good[ModelId("m1")].stale
        with pytest.raises(TemporaryError, match="500"):
            source.poll(now_s=now + 300)
    stale = engine.last_forecasts(stale=True)
    forecast = stale[ModelId("m1")]
    assert forecast.stale
    np.testing.assert_array_equal(forecast.mean, good[ModelId("m1")].mean)
    assert np.all(np.isfinite(forecast.values))


def test_series_without_the_model_label_is_a_scoped_invalid_input_issue() -> None:
    behaviour = Behaviour(answers=["ok"])
    with fake_prometheus(behaviour) as url:
        source, _ = _source(url, model_label="deployment")
        batch = source.fetch(start_s=0, end_s=600)
    assert batch.models == ()  # nothing attributable; the poll itself succeeded
    (issue,) = source.report().issues
    assert issue.kind == "InvalidInput"
    assert "without the label 'deployment'" in issue.message
    assert source.query in issue.message


def test_negative_and_nan_samples_are_missing_not_counts() -> None:
    samples: list[list[object]] = [[60, "1"], [120, "NaN"], [180, "-2"], [240, "+Inf"]]
    behaviour = Behaviour(answers=["samples"], samples=samples)
    with fake_prometheus(behaviour) as url:
        source, _ = _source(url)
        batch = source.fetch(start_s=0, end_s=240)
    assert isinstance(batch, SeriesBatch)
    assert batch.models == (ModelId("a"),)
    # Each sample lands on the step that ends at its time (60, 120, 180, 240).
    assert (batch.start_s, batch.steps) == (0, 4)
    counts = batch.counts[0]
    assert counts[0] == 60.0
    assert np.isnan(counts[1:]).all()
