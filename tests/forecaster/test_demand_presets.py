"""Demand presets against a real Prometheus holding series as each project exports them.

One Prometheus is backfilled (promtool) with 15-second scrapes of the request counters of vLLM,
SGLang, TGI, Triton, KServe, the Knative activator, Istio and ingress-nginx: their metric names,
their labels, the series a preset must leave out (Istio's second reporter, the queue-proxy's
unlabelled series, Triton's inference count, KServe's latency sum), several pods, and a model that
scales to zero and back. Each preset must read exactly each model's requests per minute; a gap
reads 0 once the model was seen (zero-fill), not before; two queries combine per model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.config import PrometheusSourceConfig
from forecaster.demand import PRESET_NAMES, PRESETS
from forecaster.sources.prometheus import PrometheusSource
from tests.harness.exported_counters import ExportedCounter, write_openmetrics
from tests.harness.prometheus import RunningPrometheus, prometheus_with_openmetrics

pytestmark = [pytest.mark.prometheus, pytest.mark.acceptance_fleet]

START = 1_700_000_000.0 - (1_700_000_000.0 % 3600)
MINUTES = 90
NAN = math.nan
GAP = range(30, 60)  # the scale-to-zero window of the models that have one


def _wave(base: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(v) for v in rng.poisson(base, MINUTES)]


def _with_gap(counts: list[float], gap: range = GAP) -> list[float]:
    return [NAN if minute in gap else value for minute, value in enumerate(counts)]


def _late(counts: list[float], first: int) -> list[float]:
    return [NAN if minute < first else value for minute, value in enumerate(counts)]


def _sum(*rows: list[float]) -> list[float]:
    stacked = np.array(rows, dtype=np.float64)
    total = np.nansum(stacked, axis=0)
    return [float(v) for v in np.where(np.isnan(stacked).all(axis=0), NAN, total)]


# name -> (exported series, {model: expected requests per minute before zero-fill})
Fleet = dict[str, tuple[list[ExportedCounter], dict[str, list[float]]]]


def _fleet() -> Fleet:
    fleet: Fleet = {}
    # vLLM: one series per engine and finished_reason; a second model scales to zero and back.
    stop, length, abort = _wave(20, 1), _wave(5, 2), _wave(1, 3)
    qwen = _with_gap(_wave(8, 4))
    vllm_common = {"engine": "0", "job": "vllm", "namespace": "llm"}
    fleet["vllm"] = (
        [
            ExportedCounter(
                "vllm:request_success_total",
                {**vllm_common, "model_name": "llama-3-8b", "finished_reason": reason},
                counts,
            )
            for reason, counts in (("stop", stop), ("length", length), ("abort", abort))
        ]
        + [
            ExportedCounter(
                "vllm:request_success_total",
                {**vllm_common, "model_name": "qwen-2-7b", "finished_reason": "stop"},
                qwen,
            )
        ],
        {"llama-3-8b": _sum(stop, length, abort), "qwen-2-7b": qwen},
    )
    # SGLang: two replicas (pods) of one model, the second one started late.
    pod_a, pod_b = _wave(12, 5), _late(_wave(7, 6), 20)
    fleet["sglang"] = (
        [
            ExportedCounter(
                "sglang:num_requests_total",
                {
                    "model_name": "mistral-7b",
                    "engine_type": "unified",
                    "tp_rank": "0",
                    "pp_rank": "0",
                    "pod": pod,
                },
                counts,
            )
            for pod, counts in (("sglang-0", pod_a), ("sglang-1", pod_b))
        ],
        {"mistral-7b": _sum(pod_a, pod_b)},
    )
    # TGI: no model label; two pods behind one Service (the ServiceMonitor's service label).
    tgi_a, tgi_b = _wave(9, 7), _wave(4, 8)
    fleet["tgi"] = (
        [
            ExportedCounter(
                "tgi_request_count",
                {"service": "tgi-falcon", "pod": pod, "job": "tgi-falcon", "namespace": "llm"},
                counts,
            )
            for pod, counts in (("tgi-falcon-a", tgi_a), ("tgi-falcon-b", tgi_b))
        ],
        {"tgi-falcon": _sum(tgi_a, tgi_b)},
    )
    # Triton: successes and failures are requests; nv_inference_count (batched items) is not.
    ok, failed = _wave(30, 9), _wave(2, 10)
    resnet = {"model": "resnet50", "version": "1"}
    fleet["triton"] = (
        [
            ExportedCounter("nv_inference_request_success", resnet, ok),
            ExportedCounter("nv_inference_request_failure", resnet, failed),
            ExportedCounter("nv_inference_count", resnet, _wave(300, 11)),
        ],
        {"resnet50": _sum(ok, failed)},
    )
    # KServe's model server: the predict histogram's observation count (not its sum).
    predicts = _wave(15, 12)
    iris = {"model_name": "sklearn-iris"}
    fleet["kserve"] = (
        [
            ExportedCounter("request_predict_seconds_count", iris, predicts),
            ExportedCounter("request_predict_seconds_sum", iris, _wave(3, 13)),
        ],
        {"sklearn-iris": predicts},
    )
    # Knative: the activator's otelhttp series carry kn_* labels; the queue-proxy's do not.
    activator = _wave(6, 14)
    fleet["knative"] = (
        [
            ExportedCounter(
                "http_server_request_duration_seconds_count",
                {
                    "kn_service_name": "llama-kn",
                    "kn_revision_name": "llama-kn-00001",
                    "kn_configuration_name": "llama-kn",
                    "k8s_namespace_name": "llm",
                    "http_request_method": "POST",
                    "http_response_status_code": "200",
                    "job": "activator-service",
                },
                activator,
            ),
            ExportedCounter(
                "http_server_request_duration_seconds_count",
                {
                    "http_request_method": "POST",
                    "http_response_status_code": "200",
                    "job": "llama-kn-00001-private",
                    "pod": "llama-kn-00001-deployment-x",
                },
                _with_gap(_wave(50, 15)),
            ),
        ],
        {"llama-kn": activator},
    )
    # Istio: both proxies report each request; the preset counts the client side once.
    mesh = _wave(11, 16)
    mesh_labels = {
        "destination_service_name": "llama-svc",
        "destination_workload": "llama",
        "response_code": "200",
        "source_workload": "istio-ingressgateway",
    }
    fleet["istio"] = (
        [
            ExportedCounter("istio_requests_total", {**mesh_labels, "reporter": "source"}, mesh),
            ExportedCounter(
                "istio_requests_total",
                {**mesh_labels, "reporter": "destination"},
                _with_gap(mesh),  # the server side has no proxy while at zero
            ),
        ],
        {"llama-svc": mesh},
    )
    # ingress-nginx: 200s while up and 503s while at zero are both demand.
    served, refused = _wave(10, 17), _wave(1, 18)
    ingress_labels = {
        "ingress": "gemma",
        "service": "gemma-svc",
        "method": "POST",
        "path": "/v1/completions",
        "namespace": "llm",
        "controller_class": "k8s.io/ingress-nginx",
        "controller_namespace": "ingress-nginx",
    }
    fleet["ingress-nginx"] = (
        [
            ExportedCounter(
                "nginx_ingress_controller_requests", {**ingress_labels, "status": "200"}, served
            ),
            ExportedCounter(
                "nginx_ingress_controller_requests", {**ingress_labels, "status": "503"}, refused
            ),
        ],
        {"gemma-svc": _sum(served, refused)},
    )
    return fleet


FLEET = _fleet()
# Two engines serving one model id (summed), and an engine behind its own mesh (overlapping).
SHARED_VLLM = _wave(14, 21)
SHARED_SGLANG = _with_gap(_wave(6, 22), range(0, 40))  # a second engine started at minute 40
EXTRA = [
    ExportedCounter(
        "vllm:request_success_total",
        {"model_name": "shared", "engine": "0", "finished_reason": "stop", "namespace": "b"},
        SHARED_VLLM,
    ),
    ExportedCounter(
        "sglang:num_requests_total", {"model_name": "shared", "tp_rank": "0"}, SHARED_SGLANG
    ),
    ExportedCounter(
        "istio_requests_total",
        {"destination_service_name": "shared", "reporter": "source", "response_code": "200"},
        SHARED_VLLM,
    ),
]


@pytest.fixture(scope="module")
def fleet_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPrometheus]:
    workdir = tmp_path_factory.mktemp("fleet-prometheus")
    series = [s for exported, _ in FLEET.values() for s in exported] + EXTRA
    source = workdir / "fleet.om.txt"
    write_openmetrics(series, START, source)
    with prometheus_with_openmetrics(source, workdir) as server:
        yield server


def _source(url: str, **settings: object) -> PrometheusSource:
    # A one-step rate window reads each minute exactly (the scrapes here never miss).
    config = PrometheusSourceConfig.model_validate(
        {"url": url, "timeout_s": 10.0, "retries": 0, "rate_window_s": 60, **settings}
    )
    return PrometheusSource(config, history_window_s=MINUTES * 60.0)


def _zero_filled(expected: list[float]) -> np.ndarray:
    row = np.array(expected, dtype=np.float64)
    seen = np.flatnonzero(np.isfinite(row))
    row[seen[0] :] = np.nan_to_num(row[seen[0] :])
    return row


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_reads_each_models_requests_per_minute(
    fleet_prometheus: RunningPrometheus, preset: str
) -> None:
    _, expected = FLEET[preset]
    source = _source(fleet_prometheus.url, preset=preset, matchers="")
    batch = source.fetch(start_s=START, end_s=START + MINUTES * 60)

    wanted = {ModelId(m) for m in expected}
    if preset == "vllm":
        wanted.add(ModelId("shared"))
    if preset == "sglang":
        wanted.add(ModelId("shared"))
    if preset == "istio":
        wanted.add(ModelId("shared"))
    assert set(batch.models) == wanted
    for model, counts in expected.items():
        np.testing.assert_allclose(
            batch.row(ModelId(model)), _zero_filled(counts), atol=1e-6, err_msg=preset
        )
    assert source.report().issues == ()


def test_zero_fill_reads_a_scale_to_zero_gap_as_no_requests_and_can_be_turned_off(
    fleet_prometheus: RunningPrometheus,
) -> None:
    end = START + MINUTES * 60
    qwen = ModelId("qwen-2-7b")
    filled = _source(fleet_prometheus.url, preset="vllm").fetch(start_s=START, end_s=end)
    gap = filled.row(qwen)[GAP.start : GAP.stop]
    np.testing.assert_array_equal(gap, 0.0)
    # Before a model's first sample nothing is known: the late SGLang replica of "shared".
    shared = _source(fleet_prometheus.url, preset="sglang").fetch(start_s=START, end_s=end)
    assert np.isnan(shared.row(ModelId("shared"))[:40]).all()
    assert np.isfinite(shared.row(ModelId("shared"))[40:]).all()

    raw = _source(fleet_prometheus.url, preset="vllm", zero_fill=False).fetch(
        start_s=START, end_s=end
    )
    assert np.isnan(raw.row(qwen)[GAP.start : GAP.stop]).all()
    after = raw.row(qwen)[GAP.stop :]
    np.testing.assert_allclose(after, FLEET["vllm"][1]["qwen-2-7b"][GAP.stop :], atol=1e-6)


def test_zero_fill_remembers_a_model_across_polls(fleet_prometheus: RunningPrometheus) -> None:
    qwen = ModelId("qwen-2-7b")
    source = _source(fleet_prometheus.url, preset="vllm")
    first = source.poll(now_s=START + 35 * 60)  # the whole window: ends 5 minutes into the gap
    assert qwen in first.models
    second = source.poll(now_s=START + 50 * 60)  # entirely inside the gap: no series at all
    assert second.start_s == first.end_s
    assert qwen in second.models
    np.testing.assert_array_equal(second.row(qwen), 0.0)

    unfilled = _source(fleet_prometheus.url, preset="vllm", zero_fill=False)
    unfilled.poll(now_s=START + 35 * 60)
    assert qwen not in unfilled.poll(now_s=START + 50 * 60).models

    # The query's only model at zero: Prometheus answers no series at all, still zeros.
    alone = _source(fleet_prometheus.url, preset="vllm", matchers='model_name="qwen-2-7b"')
    alone.poll(now_s=START + 35 * 60)
    gap = alone.poll(now_s=START + 50 * 60)
    assert gap.models == (qwen,)
    np.testing.assert_array_equal(gap.row(qwen), 0.0)
    back = alone.poll(now_s=START + 70 * 60)  # the engine is back at minute 60
    expected = [0.0] * 10 + FLEET["vllm"][1]["qwen-2-7b"][60:70]
    np.testing.assert_allclose(back.row(qwen), expected, atol=1e-6)


def test_two_queries_are_summed_per_model_and_max_serves_overlapping_sources(
    fleet_prometheus: RunningPrometheus,
) -> None:
    end = START + MINUTES * 60
    shared = ModelId("shared")
    engines = _source(
        fleet_prometheus.url,
        queries=[{"preset": "vllm", "matchers": 'namespace="b"'}, {"preset": "sglang"}],
    ).fetch(start_s=START, end_s=end)
    assert set(engines.models) == {shared, ModelId("mistral-7b")}
    np.testing.assert_allclose(engines.row(shared), _sum(SHARED_VLLM, SHARED_SGLANG), atol=1e-6)
    # The mistral model only SGLang serves is there too, untouched.
    np.testing.assert_allclose(
        engines.row(ModelId("mistral-7b")),
        _zero_filled(FLEET["sglang"][1]["mistral-7b"]),
        atol=1e-6,
    )

    queries = [{"preset": "vllm", "matchers": 'namespace="b"'}, {"preset": "istio"}]
    summed = _source(fleet_prometheus.url, queries=queries).fetch(start_s=START, end_s=end)
    np.testing.assert_allclose(summed.row(shared), 2 * np.array(SHARED_VLLM), atol=1e-6)
    overlapping = _source(fleet_prometheus.url, queries=queries, combine="max").fetch(
        start_s=START, end_s=end
    )
    np.testing.assert_allclose(overlapping.row(shared), SHARED_VLLM, atol=1e-6)


def test_a_query_without_the_model_label_is_one_issue_and_the_others_go_on(
    fleet_prometheus: RunningPrometheus,
) -> None:
    source = _source(
        fleet_prometheus.url,
        queries=[
            {"preset": "triton"},
            {"preset": "tgi", "model_label": "deployment"},  # not a label TGI's series have
        ],
    )
    batch = source.fetch(start_s=START, end_s=START + MINUTES * 60)
    assert batch.models == (ModelId("resnet50"),)
    (issue,) = source.report().issues
    assert issue.kind == "InvalidInput"
    assert "'deployment'" in issue.message
    assert "tgi_request_count" in issue.message  # names the query


def test_a_rejected_query_among_others_is_one_issue_and_alone_an_error(
    fleet_prometheus: RunningPrometheus,
) -> None:
    broken = "sum by (model) (rate(inference_requests_total[1m]"  # unbalanced: 400 bad_data
    source = _source(
        fleet_prometheus.url, queries=[{"preset": "kserve"}, {"preset": "custom", "query": broken}]
    )
    batch = source.fetch(start_s=START, end_s=START + MINUTES * 60)
    assert batch.models == (ModelId("sklearn-iris"),)
    (issue,) = source.report().issues
    assert issue.kind == "InvalidInput"
    assert issue.query == broken
    with pytest.raises(InvalidInput, match="rejected the query"):
        _source(fleet_prometheus.url, query=broken).fetch(start_s=START, end_s=START + 600)


def test_an_unknown_preset_is_one_config_error_listing_the_valid_names() -> None:
    for settings in ({"preset": "vlm"}, {"queries": [{"preset": "tensorrt"}]}):
        with pytest.raises(ValidationError) as raised:
            PrometheusSourceConfig.model_validate(settings)
        assert raised.value.error_count() == 1
        message = str(raised.value)
        assert "unknown demand preset" in message
        for name in PRESET_NAMES:
            assert name in message


def test_preset_settings_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(ValidationError, match="builds its own PromQL"):
        PrometheusSourceConfig.model_validate({"preset": "vllm", "query": "up"})
    with pytest.raises(ValidationError, match="needs `query`"):
        PrometheusSourceConfig.model_validate({"queries": [{"preset": "custom"}]})
    with pytest.raises(ValidationError, match="either `queries`"):
        PrometheusSourceConfig.model_validate({"preset": "vllm", "queries": [{"preset": "tgi"}]})


def test_the_default_stays_todays_custom_query() -> None:
    source = PrometheusSource(PrometheusSourceConfig())
    (query,) = source.queries
    assert query.promql == "sum by (model) (rate(inference_requests_total[1m]))"
    assert query.model_label == "model"
    assert not query.zero_fill
    (vllm,) = PrometheusSource(PrometheusSourceConfig(preset="vllm")).queries
    assert vllm.promql == "sum by (model_name) (rate(vllm:request_success_total{}[120s]))"
    assert vllm.zero_fill
