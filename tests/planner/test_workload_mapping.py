"""Model to workload by rule (issue 19): the catalog's ``workload_template``, the discovered
mapping, their precedence, and the names they make. Pure: no cluster."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.ids import ModelId
from planner.actions import ReplicaFloor, WorkloadRef
from planner.catalog import Catalog, dns_name, model_parts, parse_catalog
from planner.planner import ModelState, PlannerState, plan, workload_for
from tests.planner.helpers import context, forecast

LLAMA = ModelId("meta-llama/Llama-3.1-8B-Instruct")
RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
KSERVE_TEMPLATE = """
workload_template:
  namespace: "{org}"
  name: "{name}"
  kind: InferenceService
  api_version: serving.kserve.io/v1beta1
models:
  pinned/model:
    workload: {namespace: ops, name: pinned-by-hand}
  sized/model:
    weights_gb: 3.0
"""


def test_model_parts_are_kubernetes_names() -> None:
    assert model_parts(LLAMA) == {
        "model": "meta-llama-llama-3-1-8b-instruct",
        "org": "meta-llama",
        "name": "llama-3-1-8b-instruct",
    }
    assert model_parts(ModelId("bert")) == {"model": "bert", "org": "", "name": "bert"}
    assert dns_name("Qwen/Qwen2.5--72B__AWQ") == "qwen-qwen2-5-72b-awq"


@given(st.text(max_size=200))
def test_dns_name_is_always_a_valid_name_or_empty(text: str) -> None:
    name = dns_name(text)
    assert name == "" or (RFC1123_LABEL.match(name) and len(name) <= 63)


def test_template_maps_models_the_catalog_does_not_place() -> None:
    catalog = parse_catalog(KSERVE_TEMPLATE)

    assert workload_for(catalog.spec(LLAMA)) == WorkloadRef(
        "meta-llama", "llama-3-1-8b-instruct", "InferenceService", "serving.kserve.io/v1beta1"
    )
    # A catalog entry without a workload still gets the template's (and keeps its own sizes).
    sized = catalog.spec(ModelId("sized/model"))
    assert sized.weights_gb == 3.0
    assert workload_for(sized) == WorkloadRef(
        "sized", "model", "InferenceService", "serving.kserve.io/v1beta1"
    )
    # The catalog's own workload wins.
    assert workload_for(catalog.spec(ModelId("pinned/model"))) == WorkloadRef(
        "ops", "pinned-by-hand"
    )


def test_precedence_catalog_then_discovered_then_template_then_default() -> None:
    catalog = parse_catalog(KSERVE_TEMPLATE)
    found = WorkloadRef("prod", "llama-sts", "StatefulSet")
    catalog.discovered = {LLAMA: found, ModelId("pinned/model"): WorkloadRef("x", "y")}

    assert workload_for(catalog.spec(LLAMA)) == found
    assert workload_for(catalog.spec(ModelId("pinned/model"))) == WorkloadRef(
        "ops", "pinned-by-hand"
    )
    assert workload_for(Catalog().spec(LLAMA)) == WorkloadRef(
        "default", "meta-llama-llama-3-1-8b-instruct"
    )


def test_plan_floors_go_to_the_resolved_workload() -> None:
    ctx = context([])
    catalog = parse_catalog(KSERVE_TEMPLATE)
    catalog.discovered = {ModelId("found/m"): WorkloadRef("prod", "m", "StatefulSet")}
    models = [LLAMA, ModelId("found/m")]
    ctx = replace(
        ctx,
        catalog=catalog,
        forecasts={m: forecast(m, p_active=1.0, rate_rps=5.0) for m in models},
        models={m: ModelState(model=m) for m in models},
    )

    floors = {
        action.model: action.workload
        for action in plan(ctx, PlannerState()).plan.actions
        if isinstance(action, ReplicaFloor)
    }

    assert floors == {
        LLAMA: WorkloadRef(
            "meta-llama", "llama-3-1-8b-instruct", "InferenceService", "serving.kserve.io/v1beta1"
        ),
        ModelId("found/m"): WorkloadRef("prod", "m", "StatefulSet"),
    }


def test_template_that_cannot_name_a_model_falls_back_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="planner")
    catalog = parse_catalog("workload_template: {namespace: '{org}', name: '{name}'}\n")

    for _ in range(3):
        spec = catalog.spec(ModelId("bert"))  # no org part: the namespace would be empty

    assert workload_for(spec) == WorkloadRef("default", "bert")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "gives '' for model 'bert'" in warnings[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workload_template: {namespace: ns, name: '{model_id}'}", "may use {model}, {org}"),
        ("workload_template: {namespace: ns, name: '{name'}", "not a valid template"),
        ("workload_template: {namespace: ns}", "with 'namespace' and 'name'"),
        ("workload_template: '{namespace}/{name}'", "with 'namespace' and 'name'"),
        ("workload_template: {namespace: ns, name: x, replicas: 2}", "unknown fields"),
        ("workload_template: {namespace: Serving, name: '{name}'}", "cannot make a Kubernetes"),
        ("workload_template: {namespace: ns, name: '{name}_srv'}", "cannot make a Kubernetes"),
    ],
)
def test_bad_templates_fail_at_load_saying_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_catalog(text, origin="catalog.yaml")
