"""Replica floors on a real apiserver: /scale, HPA minReplicas, KEDA minReplicaCount, restore."""

from __future__ import annotations

import pytest

from actuator.config import ActuatorConfig
from actuator.floors import (
    FLOOR_LABEL,
    ORIGINAL_MIN,
    ORIGINAL_REPLICAS,
    SET_REPLICAS,
    ReplicaFloors,
)
from actuator.kube import KubeClient, Obj
from common.errors import NotFound
from common.ids import ModelId
from planner.actions import ReplicaFloor, WorkloadRef
from tests.harness.workloads import deployment, get, hpa, scaled_object

pytestmark = pytest.mark.k8s

NOW = 1_800_000_000.0


def floor(
    namespace: str, minimum: int, *, name: str = "llama", until: float = NOW + 600
) -> ReplicaFloor:
    return ReplicaFloor(
        model=ModelId(name),
        workload=WorkloadRef(namespace=namespace, name=name),
        min_replicas=minimum,
        until_s=until,
        reason="forecast p90 needs 4 replicas at 09:00",
        value=300.0,
    )


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


def test_scale_floor_records_original_and_restores(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    path = deployment(kube, config.namespace, replicas=1)
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(config.namespace, 4), now_s=NOW)

    assert result.via == "scale"
    assert result.changed
    assert result.value == 4
    raised = get(kube, path)
    assert raised["spec"]["replicas"] == 4
    assert annotations_of(raised)[ORIGINAL_REPLICAS] == "1"
    assert raised["metadata"]["labels"][FLOOR_LABEL] == "active"

    rv = raised["metadata"]["resourceVersion"]
    again = floors.raise_floor(floor(config.namespace, 4), now_s=NOW)
    assert not again.changed
    assert get(kube, path)["metadata"]["resourceVersion"] == rv

    floors.reconcile([], now_s=NOW)  # the floor left the plan

    restored = get(kube, path)
    assert restored["spec"]["replicas"] == 1
    assert ORIGINAL_REPLICAS not in annotations_of(restored)
    assert FLOOR_LABEL not in (restored["metadata"].get("labels") or {})


def test_floor_expires_by_time(kube: KubeClient, config: ActuatorConfig) -> None:
    path = deployment(kube, config.namespace, replicas=2)
    floors = ReplicaFloors(kube, config)
    planned = [floor(config.namespace, 5, until=NOW + 60)]

    floors.reconcile(planned, now_s=NOW)
    assert get(kube, path)["spec"]["replicas"] == 5
    floors.reconcile(planned, now_s=NOW + 61)  # same plan, but the floor's time has passed
    assert get(kube, path)["spec"]["replicas"] == 2


def test_scale_floor_never_lowers_a_higher_count(kube: KubeClient, config: ActuatorConfig) -> None:
    path = deployment(kube, config.namespace, replicas=6)
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(config.namespace, 3), now_s=NOW)

    assert not result.changed
    unchanged = get(kube, path)
    assert unchanged["spec"]["replicas"] == 6
    assert ORIGINAL_REPLICAS not in annotations_of(unchanged)  # met on its own: no record


def test_restore_keeps_a_value_someone_else_set(kube: KubeClient, config: ActuatorConfig) -> None:
    path = deployment(kube, config.namespace, replicas=1)
    floors = ReplicaFloors(kube, config)
    floors.raise_floor(floor(config.namespace, 3), now_s=NOW)
    # An operator scales by hand while the floor is up.
    kube.merge_patch(
        path + "/scale", {"spec": {"replicas": 7}}, field_manager="kubectl", dry_run=False
    )

    floors.restore(WorkloadRef(config.namespace, "llama"))

    restored = get(kube, path)
    assert restored["spec"]["replicas"] == 7
    assert ORIGINAL_REPLICAS not in annotations_of(restored)


def test_hpa_floor_raises_min_replicas_and_never_scales_the_deployment(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    dep_path = deployment(kube, config.namespace, replicas=2)
    hpa_path = hpa(kube, config.namespace, "llama", min_replicas=2)
    dep_rv = get(kube, dep_path)["metadata"]["resourceVersion"]
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(config.namespace, 4), now_s=NOW)

    assert result.via == "hpa"
    assert result.value == 4
    raised = get(kube, hpa_path)
    assert raised["spec"]["minReplicas"] == 4
    assert annotations_of(raised)[ORIGINAL_MIN] == "2"
    assert annotations_of(raised)[SET_REPLICAS] == "4"
    assert get(kube, dep_path)["metadata"]["resourceVersion"] == dep_rv  # never touched

    # A floor above maxReplicas is capped (the API rejects min > max).
    assert floors.raise_floor(floor(config.namespace, 50), now_s=NOW).value == 10

    floors.reconcile([], now_s=NOW)
    restored = get(kube, hpa_path)
    assert restored["spec"]["minReplicas"] == 2
    assert ORIGINAL_MIN not in annotations_of(restored)
    assert get(kube, dep_path)["metadata"]["resourceVersion"] == dep_rv


def test_hpa_without_min_replicas_records_the_api_default(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    deployment(kube, config.namespace)
    hpa_path = hpa(kube, config.namespace, "llama", min_replicas=None)
    floors = ReplicaFloors(kube, config)
    # The apiserver defaults an omitted minReplicas to 1 on create: that is the original.
    assert get(kube, hpa_path)["spec"]["minReplicas"] == 1

    floors.raise_floor(floor(config.namespace, 3), now_s=NOW)
    assert annotations_of(get(kube, hpa_path))[ORIGINAL_MIN] == "1"
    floors.restore(WorkloadRef(config.namespace, "llama"))
    assert get(kube, hpa_path)["spec"]["minReplicas"] == 1


@pytest.mark.usefixtures("keda_crd")
def test_keda_floor_raises_min_replica_count(kube: KubeClient, config: ActuatorConfig) -> None:
    dep_path = deployment(kube, config.namespace, replicas=0)
    so_path = scaled_object(kube, config.namespace, "llama", minimum=None)
    # KEDA's generated HPA, owned by the ScaledObject: prewarm must not write to it.
    so_uid = get(kube, so_path)["metadata"]["uid"]
    keda_hpa = hpa(kube, config.namespace, "llama", min_replicas=1)
    kube.merge_patch(
        keda_hpa,
        {
            "metadata": {
                "ownerReferences": [
                    {
                        "apiVersion": "keda.sh/v1alpha1",
                        "kind": "ScaledObject",
                        "name": "llama-so",
                        "uid": so_uid,
                    }
                ]
            }
        },
        field_manager="keda",
        dry_run=False,
    )
    floors = ReplicaFloors(kube, config)

    result = floors.raise_floor(floor(config.namespace, 2), now_s=NOW)

    assert result.via == "scaledobject"
    raised = get(kube, so_path)
    assert raised["spec"]["minReplicaCount"] == 2
    assert annotations_of(raised)[ORIGINAL_MIN] == "unset"
    assert get(kube, keda_hpa)["spec"]["minReplicas"] == 1
    assert get(kube, dep_path)["spec"]["replicas"] == 0
    assert floors.floored() == {WorkloadRef(config.namespace, "llama")}

    floors.reconcile([], now_s=NOW)

    restored = get(kube, so_path)
    assert "minReplicaCount" not in restored["spec"]  # put back to unset, exactly
    assert ORIGINAL_MIN not in annotations_of(restored)
    assert floors.floored() == set()


def test_missing_keda_disables_scaled_objects_with_one_warning(
    kube: KubeClient, config: ActuatorConfig, warnings_of: pytest.LogCaptureFixture
) -> None:
    path = deployment(kube, config.namespace, replicas=1)
    floors = ReplicaFloors(kube, config)

    floors.reconcile([floor(config.namespace, 2)], now_s=NOW)
    floors.reconcile([floor(config.namespace, 3)], now_s=NOW)

    assert get(kube, path)["spec"]["replicas"] == 3  # /scale still works
    keda_warnings = [r for r in warnings_of.records if "KEDA" in r.getMessage()]
    assert len(keda_warnings) == 1


def test_dry_run_changes_nothing(kube: KubeClient, config: ActuatorConfig) -> None:
    dep_path = deployment(kube, config.namespace, replicas=1)
    hpa_path = hpa(kube, config.namespace, "other", min_replicas=1)
    deployment(kube, config.namespace, name="other")
    before = {p: get(kube, p)["metadata"]["resourceVersion"] for p in (dep_path, hpa_path)}
    floors = ReplicaFloors(kube, config.model_copy(update={"dry_run": True}))

    results = floors.reconcile(
        [floor(config.namespace, 3), floor(config.namespace, 3, name="other")], now_s=NOW
    )

    assert {r.via for r in results} == {"scale", "hpa"}
    assert all(r.dry_run for r in results)
    after = {p: get(kube, p)["metadata"]["resourceVersion"] for p in (dep_path, hpa_path)}
    assert after == before


def test_one_missing_workload_does_not_stop_the_other_floors(
    kube: KubeClient, config: ActuatorConfig
) -> None:
    path = deployment(kube, config.namespace, replicas=1)
    floors = ReplicaFloors(kube, config)

    results = floors.reconcile(
        [floor(config.namespace, 2, name="missing"), floor(config.namespace, 2)], now_s=NOW
    )

    assert isinstance(results[0].error, NotFound)
    assert results[1].error is None
    assert get(kube, path)["spec"]["replicas"] == 2


@pytest.mark.parametrize("via", ["scale", "hpa"])
def test_an_operators_change_during_a_floor_is_what_the_restore_puts_back(
    kube: KubeClient, config: ActuatorConfig, via: str
) -> None:
    """The operator's last change wins: one rule for /scale and HPA floors."""
    dep_path = deployment(kube, config.namespace, replicas=1)
    path, field = dep_path, "replicas"
    if via == "hpa":
        path, field = hpa(kube, config.namespace, "llama", min_replicas=1), "minReplicas"
    floors = ReplicaFloors(kube, config)
    floors.raise_floor(floor(config.namespace, 3), now_s=NOW)
    assert get(kube, path)["spec"][field] == 3
    # An operator sets 2 while the floor (3) is up; the floor still stands and is raised again.
    change = path + "/scale" if via == "scale" else path
    kube.merge_patch(change, {"spec": {field: 2}}, field_manager="kubectl", dry_run=False)
    floors.raise_floor(floor(config.namespace, 3), now_s=NOW)
    assert get(kube, path)["spec"][field] == 3

    floors.reconcile([], now_s=NOW)  # the floor ends

    restored = get(kube, path)
    assert restored["spec"][field] == 2  # the operator's value, not the one before the floor
    assert ORIGINAL_REPLICAS not in annotations_of(restored)
    assert ORIGINAL_MIN not in annotations_of(restored)
