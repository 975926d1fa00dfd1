"""The pure rules of workload discovery (:func:`actuator.workloads.resolve`): one top object per
model, controlled copies dropped, conflicts and claims only by controlled objects reported."""

from __future__ import annotations

from actuator.workloads import Claim, resolve
from common.ids import ModelId
from planner.actions import WorkloadRef

M = ModelId("meta-llama/Llama-3.1-8B")
ISVC = WorkloadRef("prod", "llama", "InferenceService", "serving.kserve.io/v1beta1")
KSERVE_DEPLOYMENT = WorkloadRef("prod", "llama-predictor")


def test_a_copy_on_a_controlled_object_yields_to_its_top_object() -> None:
    claims = [Claim(M, KSERVE_DEPLOYMENT, "InferenceService llama"), Claim(M, ISVC, None)]

    resolved = resolve(claims, overridden=set())

    assert resolved.workloads == {M: ISVC}
    assert resolved.problems == {}


def test_two_top_objects_leave_the_model_unresolved_naming_both() -> None:
    sts = WorkloadRef("prod", "llama", "StatefulSet")
    resolved = resolve([Claim(M, ISVC, None), Claim(M, sts, None)], overridden=set())

    assert resolved.workloads == {}
    message = str(resolved.problems[M])
    assert "claimed by 2 workloads (InferenceService prod/llama, StatefulSet prod/llama)" in message
    assert "catalog entry" in message


def test_only_controlled_claims_name_the_controller() -> None:
    claims = [Claim(M, KSERVE_DEPLOYMENT, "LeaderWorkerSet llama")]

    message = str(resolve(claims, overridden=set()).problems[M])

    assert "controlled by LeaderWorkerSet llama" in message
    assert "Deployment, StatefulSet, InferenceService, Knative Service" in message


def test_the_catalog_overrides_every_claim() -> None:
    sts = WorkloadRef("prod", "llama", "StatefulSet")
    resolved = resolve([Claim(M, ISVC, None), Claim(M, sts, None)], overridden={M})

    assert resolved.workloads == {}
    assert resolved.problems == {}
