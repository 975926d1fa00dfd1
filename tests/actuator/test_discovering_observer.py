"""The daemon's observer wrapper: workload discovery runs before each observation, and a failed
discovery keeps the last mapping while the observation goes on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from kubernetes import client as k8s_client

from actuator.config import RetryConfig
from actuator.kube import KubeClient
from actuator.workloads import DiscoveringObserver, WorkloadDiscovery
from common.ids import ModelId
from planner.actions import WorkloadRef
from planner.catalog import Catalog
from planner.observed import ClusterSnapshot

MODEL = ModelId("meta-llama/Llama-3.1-8B")


class RecordingObserver:
    """A stand-in for the cluster observer (this test is about the wrapper): records calls and
    what the catalog mapped the model to at that moment."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.seen: list[WorkloadRef | None] = []

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        self.seen.append(self.catalog.spec(models[0]).workload)
        return ClusterSnapshot(models={}, pools={})


async def test_a_failed_discovery_keeps_the_last_mapping_and_the_tick_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="actuator")
    # An apiserver that is not there: every call fails (after one try) as a TemporaryError.
    configuration = k8s_client.Configuration(host="http://127.0.0.1:9")
    dead = KubeClient(
        k8s_client.ApiClient(configuration), RetryConfig(attempts=1, request_timeout_s=1.0)
    )
    catalog = Catalog()
    found = WorkloadRef("prod", "llama", "StatefulSet")
    catalog.discovered = {MODEL: found}  # what the last successful discovery published
    inner = RecordingObserver(catalog)
    observer = DiscoveringObserver(inner, WorkloadDiscovery(dead, catalog))

    snapshot = await observer.observe(now_s=0.0, models=[MODEL])

    assert snapshot == ClusterSnapshot(models={}, pools={})
    assert inner.seen == [found]
    assert catalog.discovered == {MODEL: found}
    assert any("workload discovery failed" in r.getMessage() for r in caplog.records)
