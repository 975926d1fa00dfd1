"""The daemon's RBAC beyond the actuator's (``<release>-prewarm-daemon``) is sufficient and minimal.

As tests/actuator/test_rbac.py does for the actuator: ``helm template`` renders the chart, the
ServiceAccount and its RBAC objects (actuator's and daemon's) are applied to the real API server,
and the daemon's own Kubernetes operations run as that ServiceAccount (TokenRequest token): the
leader Lease (create, renew, release), the control API's ConfigMap store (create, replace, read)
and the cluster observer (nodes, pods and events in every namespace, the workload). All succeed.
Then, one verb at a time, that verb is removed from the daemon's rendered rules and the operations
must fail with 403, so no verb is superfluous.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import yaml
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig
from actuator.kube import KubeClient, Obj
from actuator.observer import KubeClusterObserver
from common.errors import PermissionDenied
from common.ids import ModelId
from planner.catalog import Catalog
from prewarm.control.overrides import ControlState, Pause
from prewarm.control.store import ConfigMapControlStore
from prewarm.daemon.leader import LEASES, LeaseElector
from tests.harness.helm import render
from tests.harness.k8s import ControlPlane, make_kwok_nodes, make_namespace
from tests.harness.kube import FAST_RETRY
from tests.harness.rbac import (
    RBAC_KINDS,
    RULE_KINDS,
    apply_as_helm,
    delete_cluster_rbac,
    grants,
    revoked,
    service_account_token,
    service_account_user,
)
from tests.harness.workloads import pod_body

pytestmark = [pytest.mark.k8s, pytest.mark.helm]

NOW = 1_800_000_000.0


class LeaseRefused(Exception):
    """A Lease round that should have won did not (the elector logs the 403 and reports False)."""


@dataclass
class Setup:
    admin: KubeClient
    actor_api: k8s_client.ApiClient
    actor: KubeClient
    user: str
    namespace: str
    lease: str
    store: str
    rules: list[Obj]  # the daemon's Role and ClusterRole as rendered


@pytest.fixture
def setup(
    k8s_control_plane: ControlPlane, k8s_api: k8s_client.ApiClient, k8s_namespace: str
) -> Iterator[Setup]:
    admin = KubeClient(k8s_api, FAST_RETRY)
    release = f"d{k8s_namespace}"
    docs = render(release=release, namespace=k8s_namespace)
    names = {f"{release}-prewarm-actuator", f"{release}-prewarm-daemon"}
    rbac = [doc for doc in docs if doc["kind"] in RBAC_KINDS and doc["metadata"]["name"] in names]
    assert len(rbac) == 8
    accounts = [doc for doc in docs if doc["kind"] == "ServiceAccount"]
    apply_as_helm(admin, [*accounts, *rbac])
    binding = next(
        doc for doc in rbac
        if doc["kind"] == "RoleBinding" and doc["metadata"]["name"] == f"{release}-prewarm-daemon"
    )  # fmt: skip
    account = binding["subjects"][0]["name"]
    token = service_account_token(admin, k8s_namespace, account)
    actor_api = k8s_control_plane.token_client(token)
    # Something to observe: a GPU node and a serving pod in another namespace.
    apps = f"{k8s_namespace}-apps"
    make_namespace(k8s_api, apps)
    make_kwok_nodes(k8s_api, pool=f"daemon-{k8s_namespace}", count=1)
    model_pod = pod_body("model", image="registry.example/m:1")
    k8s_client.CoreV1Api(k8s_api).create_namespaced_pod(apps, model_pod)  # type: ignore[arg-type]
    config = yaml_config(docs, f"{release}-prewarm-config")
    daemon_rules = [
        doc for doc in rbac
        if doc["kind"] in RULE_KINDS
        and doc["metadata"]["name"] == f"{release}-prewarm-daemon"
    ]  # fmt: skip
    yield Setup(
        admin=admin,
        actor_api=actor_api,
        actor=KubeClient(actor_api, FAST_RETRY),
        user=service_account_user(k8s_namespace, account),
        namespace=k8s_namespace,
        lease=config["daemon"].get("leader_election", {}).get("lease_name", "prewarm-leader"),
        store=config["control"].get("configmap_name", "prewarm-control"),
        rules=daemon_rules,
    )
    delete_cluster_rbac(admin, rbac)


def yaml_config(docs: list[Obj], name: str) -> Obj:
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
    data: Obj = yaml.safe_load(config_map["data"]["prewarm.yaml"])
    return data


def every_daemon_operation(s: Setup) -> None:
    """The daemon's own API calls, as the ServiceAccount; raises on the first refusal."""
    clock = {"now": NOW}
    elector = LeaseElector(
        s.actor, namespace=s.namespace, name=s.lease, identity="pod-0_1",
        lease_duration_s=15, retry_period_s=2.0, address="10.0.0.1:9090",
        clock=lambda: clock["now"],
    )  # fmt: skip

    async def lease() -> None:
        if not await elector.try_acquire_or_renew():  # get, create
            raise LeaseRefused("could not create the Lease")
        clock["now"] += 5
        if not await elector.try_acquire_or_renew():  # get, patch (renew)
            raise LeaseRefused("could not renew the Lease")
        await elector.release()  # get, patch (logs a failure instead of raising)

    asyncio.run(lease())
    stored = s.admin.get(LEASES.path(s.namespace, s.lease))
    assert stored is not None
    if stored["spec"].get("holderIdentity"):
        raise LeaseRefused("could not release the Lease")

    store = ConfigMapControlStore(
        k8s_client.CoreV1Api(s.actor_api), namespace=s.namespace, name=s.store, clock=lambda: NOW
    )

    def add_pause(model: str) -> Callable[[ControlState], tuple[ControlState, None]]:
        def change(state: ControlState) -> tuple[ControlState, None]:
            pause = Pause(ModelId(model), created_s=NOW, created_by="test")
            return ControlState(state.requests, state.pins, (*state.pauses, pause)), None

        return change

    async def control() -> None:
        await store.update(add_pause("a"))  # get (404), create
        await store.update(add_pause("b"))  # get, update (replace)
        state = await store.load()  # get
        assert [p.model for p in state.pauses] == ["a", "b"]

    asyncio.run(control())

    observer = KubeClusterObserver(
        s.actor, config=ActuatorConfig(namespace=s.namespace), catalog=Catalog()
    )
    snapshot = asyncio.run(observer.observe(now_s=NOW, models=[ModelId("model")]))
    assert snapshot.pools  # nodes listed; pods in every namespace listed; workload read


def reset(s: Setup) -> None:
    """Remove the Lease and the ConfigMap as admin, so the next run creates them again."""
    s.admin.delete(LEASES.path(s.namespace, s.lease), dry_run=False)
    s.admin.delete(f"/api/v1/namespaces/{s.namespace}/configmaps/{s.store}", dry_run=False)


def test_every_daemon_operation_succeeds_as_the_service_account(setup: Setup) -> None:
    every_daemon_operation(setup)
    reset(setup)
    every_daemon_operation(setup)  # and again from scratch, after a restart of the cluster state


def test_outside_its_rules_the_daemon_is_refused(setup: Setup) -> None:
    other = "someone-elses-lease"
    with pytest.raises(PermissionDenied):  # the Lease rule is for its own Lease only
        setup.actor.get(LEASES.path(setup.namespace, other))
    with pytest.raises(PermissionDenied):  # ConfigMaps: only the control store by name
        setup.actor.get(f"/api/v1/namespaces/{setup.namespace}/configmaps/{setup.store}-other")
    with pytest.raises(PermissionDenied):
        setup.actor.list(f"/api/v1/namespaces/{setup.namespace}/configmaps")
    with pytest.raises(PermissionDenied):
        setup.actor.list("/api/v1/secrets")
    with pytest.raises(PermissionDenied):  # pods are listed, never read one by one
        setup.actor.get(f"/api/v1/namespaces/{setup.namespace}-apps/pods/model")


@pytest.mark.slow
def test_no_daemon_verb_is_superfluous(setup: Setup) -> None:
    """Removing any single verb from the daemon's rules makes one of its operations fail."""
    checked = 0
    for grant in grants(setup.rules):
        with (
            revoked(setup.admin, setup.user, grant, then=lambda: reset(setup)),
            pytest.raises((PermissionDenied, LeaseRefused)),
        ):
            every_daemon_operation(setup)
        checked += 1
    # leases create, get, patch; configmaps create, get, update; events list (pods are listed
    # with the actuator's ClusterRole, which its image pre-pull needs too)
    assert checked == 7
