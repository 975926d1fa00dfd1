"""The README's "Install on a vLLM fleet" walkthrough, block by block, on real components.

Each ``# file: NAME`` YAML block of that README section is read from the README itself (so the
walkthrough cannot drift from what is tested). On the real API server, with the real CRDs of
Karpenter and the Prometheus Operator: the NodePool and the vLLM Deployment + PodMonitor are
applied with strict field validation (the ``llm`` namespace becomes the test's), and the chart is
rendered with ``prewarm-values.yaml`` and every object applied the same way. Then the daemon's own
parts read what the chart rendered: the settings and the catalog from its ConfigMap; the
forecaster's Prometheus source, with the vLLM preset, reads the model's demand from vLLM's counter
in a real Prometheus (backfilled with series named and labelled as vLLM exports them); workload
discovery finds the Deployment by its ``prewarm.io/model`` label and annotation; the cluster
observer knows the NodePool as a pool with no node. kube-prometheus-stack's values cannot be
installed here (no chart repository): they are checked for what prewarm relies on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from kubernetes import client as k8s_client

from actuator.kube import KubeClient
from actuator.observer import KubeClusterObserver
from actuator.workloads import WorkloadDiscovery
from common.ids import ModelId, PoolName
from forecaster.sources.prometheus import PrometheusSource
from planner.catalog import load_catalog
from planner.planner import workload_for
from prewarm.settings import load_settings
from tests.chart.test_install import call, missing, resource_path, strict_apply
from tests.harness.crds import (
    KARPENTER_NODE_CLAIMS,
    KARPENTER_NODE_POOLS,
    POD_MONITORS,
    PROMETHEUS_RULES,
    SERVICE_MONITORS,
    real_crds,
)
from tests.harness.exported_counters import ExportedCounter, write_openmetrics
from tests.harness.helm import Obj, render
from tests.harness.kube import FAST_RETRY
from tests.harness.prometheus import prometheus_with_openmetrics

pytestmark = [
    pytest.mark.acceptance_fleet,
    pytest.mark.k8s,
    pytest.mark.helm,
    pytest.mark.prometheus,
]

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Install on a vLLM fleet"
MODEL = ModelId("meta-llama/Llama-3.1-8B-Instruct")
MINUTES = 120


def walkthrough_files() -> dict[str, str]:
    """The YAML blocks of the README's walkthrough section, by the name on their first line."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    section = text[start : end if end >= 0 else len(text)]
    blocks = re.findall(r"```yaml\n# file: (\S+)\n(.*?)```", section, flags=re.S)
    return dict(blocks)


@pytest.fixture
def kube(k8s_api: k8s_client.ApiClient) -> Iterator[KubeClient]:
    client = KubeClient(k8s_api, FAST_RETRY)
    crds = (KARPENTER_NODE_POOLS, KARPENTER_NODE_CLAIMS, POD_MONITORS, SERVICE_MONITORS,
            PROMETHEUS_RULES)  # fmt: skip
    with real_crds(client, *crds):
        yield client


def _in_namespace(doc: Obj, namespace: str) -> Obj:
    if doc["metadata"].get("namespace") == "llm":
        doc["metadata"]["namespace"] = namespace
    return doc


def test_the_readmes_vllm_fleet_walkthrough_applies_and_the_daemon_reads_it(
    kube: KubeClient, k8s_api: k8s_client.ApiClient, k8s_namespace: str, tmp_path: Path
) -> None:
    files = walkthrough_files()
    assert sorted(files) == [
        "kube-prometheus-stack-values.yaml", "nodepool.yaml", "prewarm-values.yaml", "vllm.yaml",
    ]  # fmt: skip

    # 1. kube-prometheus-stack: history longer than the daemon's window, PodMonitors selected.
    stack = yaml.safe_load(files["kube-prometheus-stack-values.yaml"])["prometheus"]
    retention_days = int(stack["prometheusSpec"]["retention"].removesuffix("d"))
    assert stack["prometheusSpec"]["podMonitorSelectorNilUsesHelmValues"] is False

    # 2 and 3: the NodePool, the vLLM Deployment and its PodMonitor, as a user applies them.
    applied: list[Obj] = []
    for name in ("nodepool.yaml", "vllm.yaml"):
        for doc in yaml.safe_load_all(files[name]):
            applied.append(_in_namespace(doc, k8s_namespace))
    try:
        for doc in applied:
            stored = strict_apply(k8s_api, doc)  # refused if a field is unknown or invalid
            assert stored["metadata"].get("annotations") == doc["metadata"].get("annotations")

        # 4. The chart with the walkthrough's values.
        values = tmp_path / "prewarm-values.yaml"
        values.write_text(files["prewarm-values.yaml"], encoding="utf-8")
        docs = render(values, release=f"w{k8s_namespace}", namespace=k8s_namespace)
        for doc in docs:
            stored = strict_apply(k8s_api, doc)
            assert missing(doc, stored) == [], f"{doc['kind']} {doc['metadata']['name']}"
        applied += [d for d in docs if "namespace" not in d["metadata"]]

        config_map = next(
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")
        )
        (tmp_path / "prewarm.yaml").write_text(config_map["data"]["prewarm.yaml"])
        (tmp_path / "catalog.yaml").write_text(config_map["data"]["catalog.yaml"])
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        config_volume = next(
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
        )
        assert {"key": "catalog.yaml", "path": "catalog.yaml"} in config_volume["configMap"][
            "items"
        ]
        settings = load_settings(tmp_path / "prewarm.yaml")
        assert settings.planner.catalog_path == "/etc/prewarm/catalog.yaml"
        assert settings.forecaster.history_window_s <= retention_days * 86400
        catalog = load_catalog(tmp_path / "catalog.yaml")
        spec = catalog.spec(MODEL)
        assert (spec.node_pool, spec.defaulted) == (PoolName("gpu-h100"), False)

        _demand_is_read_with_the_vllm_preset(settings, tmp_path)

        # Workload discovery finds the Deployment; the observer knows the NodePool with no node.
        WorkloadDiscovery(kube, catalog).refresh()
        workload = workload_for(catalog.spec(MODEL))
        assert (workload.kind, workload.namespace, workload.name) == (
            "Deployment", k8s_namespace, "llama-3-1-8b",
        )  # fmt: skip
        observer = KubeClusterObserver(kube, config=settings.actuator, catalog=catalog)
        snapshot = asyncio.run(observer.observe(now_s=time.time(), models=[MODEL]))
        pool = snapshot.pools[PoolName("gpu-h100")]
        assert pool.free_gpus == 0
        assert not [node for node in snapshot.nodes if node.pool == "gpu-h100"]
    finally:
        for doc in applied:
            if "namespace" not in doc["metadata"]:  # cluster-scoped: the test namespace goes
                call(k8s_api, "DELETE", resource_path(k8s_api, doc))


def _demand_is_read_with_the_vllm_preset(settings: object, tmp_path: Path) -> None:
    """The rendered Prometheus settings (URL aside) read vLLM's counters per served model."""
    now = time.time()
    start_s = (now // 60) * 60 - MINUTES * 60
    rng = np.random.default_rng(7)
    per_reason = {reason: rng.poisson(rate, MINUTES).astype(float).tolist()
                  for reason, rate in (("stop", 12), ("length", 3))}  # fmt: skip
    series = [
        ExportedCounter(
            "vllm:request_success_total",
            {
                "model_name": str(MODEL),
                "finished_reason": reason,
                "engine": "0",
                "namespace": "llm",
                "pod": "llama-3-1-8b-0",
            },
            counts,
        )
        for reason, counts in per_reason.items()
    ]
    source_file = tmp_path / "vllm.om"
    write_openmetrics(series, start_s, source_file)
    with prometheus_with_openmetrics(source_file, tmp_path / "prom") as prometheus:
        config = settings.forecaster.prometheus.model_copy(  # type: ignore[attr-defined]
            update={"url": prometheus.url}
        )
        source = PrometheusSource(config, history_window_s=MINUTES * 60)
        batch = source.fetch(start_s=start_s, end_s=start_s + MINUTES * 60)
    assert batch.models == (MODEL,)
    expected = np.add(per_reason["stop"], per_reason["length"])
    # The preset's rate() window is 2 minutes (one missed scrape is no gap), so per minute the
    # source reads a 2-minute average: compare totals over whole minutes well inside the series.
    inner = slice(5, MINUTES - 5)
    got = float(np.nansum(batch.counts[0][inner]))
    assert got == pytest.approx(float(expected[inner].sum()), rel=0.03)
