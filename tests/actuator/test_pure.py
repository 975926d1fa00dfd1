"""The actuator's pure parts: names, paths, settings validation, status interpretation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from actuator.config import ActuatorConfig
from actuator.floors import scale_target_matches
from actuator.kube import DEPLOYMENTS, NODES, Resource
from actuator.names import MAX_NAME, dns_label
from actuator.prepull import pod_outcome
from common.errors import InvalidInput
from planner.actions import WorkloadRef
from prewarm.settings import load_settings

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


@given(st.text(min_size=1, max_size=200))
def test_dns_label_is_always_valid(readable: str) -> None:
    name = dns_label("prewarm-placeholder", readable)
    assert len(name) <= MAX_NAME
    assert re.match(_DNS_LABEL, name), name


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_dns_label_distinct_inputs_never_collide(a: str, b: str) -> None:
    if a != b:
        assert dns_label("p", a) != dns_label("p", b)


def test_dns_label_keeps_clean_names_readable() -> None:
    assert dns_label("prewarm-placeholder", "a100") == "prewarm-placeholder-a100"
    assert dns_label("prewarm-placeholder", "A100_80GB").startswith(
        "prewarm-placeholder-a100-80gb-"
    )


def test_resource_paths() -> None:
    assert (
        DEPLOYMENTS.path("ns", "web", sub="scale")
        == "/apis/apps/v1/namespaces/ns/deployments/web/scale"
    )
    assert NODES.path(name="n1") == "/api/v1/nodes/n1"
    assert Resource("v1", "pods").path("ns") == "/api/v1/namespaces/ns/pods"
    assert DEPLOYMENTS.path() == "/apis/apps/v1/deployments"  # all namespaces


def test_invalid_pool_label_is_one_clear_error_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="not a Kubernetes label key"):
        ActuatorConfig(pool_label="not a label!")
    with pytest.raises(InvalidInput, match=r"actuator\.pool_label"):
        load_settings(actuator={"pool_label": "bad key/"})


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ({"phase": "Succeeded"}, "succeeded"),
        ({"phase": "Pending"}, "running"),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "nope"}}}
                ],
            },
            "ImagePullBackOff: nope",
        ),
        (
            {"phase": "Running", "containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}]},
            "succeeded",
        ),
        ({"phase": "Failed", "reason": "Evicted"}, "pod failed: Evicted"),
    ],
)
def test_prepull_outcome_from_pod_status(status: dict[str, object], outcome: str) -> None:
    assert pod_outcome({"status": status}) == outcome


def test_scale_target_matching_ignores_version_but_not_group() -> None:
    workload = WorkloadRef("ns", "web")
    assert scale_target_matches({"name": "web"}, workload)  # KEDA defaults: apps/v1 Deployment
    assert scale_target_matches(
        {"name": "web", "kind": "Deployment", "apiVersion": "apps/v1beta2"}, workload
    )
    assert not scale_target_matches(
        {"name": "web", "kind": "StatefulSet", "apiVersion": "apps/v1"}, workload
    )
    assert not scale_target_matches({"name": "other", "kind": "Deployment"}, workload)
