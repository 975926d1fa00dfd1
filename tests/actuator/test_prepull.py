"""Image pre-pull on a real apiserver with kwok nodes.

What this proves: the actuator creates exactly one pod per schedulable node of the pool, bound to
that node, with the no-shell recipe (helper init container copies a static busybox into an
emptyDir, the target image runs it); it tracks the pods to completion through the pod status a
kubelet reports, reports pull failures, honours the deadline, and removes every pod afterwards.
What it cannot prove: kwok has no container runtime, so no image is pulled and no binary runs here;
kwok sets the statuses a kubelet would (prewarm/up/kwok_stages.yaml: Running, then Succeeded for
pre-pull pods; ErrImagePull for images under unpullable.invalid/). That the recipe really runs in
a shell-less image is a property of the pod spec asserted below, not something kwok executes.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig
from actuator.kube import PODS, KubeClient
from actuator.prepull import ImagePrepuller, PrepullStatus
from common.errors import DeadlineExceeded
from common.ids import NodeName, PoolName
from planner.actions import ImagePrepull
from tests.harness.k8s import make_kwok_nodes, wait_for

pytestmark = pytest.mark.k8s

IMAGE = "gcr.io/distroless/static-debian12:nonroot"


def prepull(pool: str, image: str = IMAGE, deadline_s: float = 2e9) -> ImagePrepull:
    return ImagePrepull(
        pool=PoolName(pool), image=image, deadline_s=deadline_s, reason="r", value=1.0
    )


def prepull_pods(kube: KubeClient, namespace: str) -> list[dict[str, object]]:
    return kube.list(
        PODS.path(namespace), label_selector="app.kubernetes.io/component=image-prepull"
    )


def step_until_done(
    puller: ImagePrepuller, action: ImagePrepull, *, now_s: float = 1e9
) -> PrepullStatus:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := puller.step(action, now_s=now_s)).done and s,
        timeout_s=60,
        interval_s=0.3,
        what=f"pre-pull of {action.image}",
    )


@pytest.fixture
def pool(k8s_api: k8s_client.ApiClient, k8s_namespace: str) -> str:
    """A pool of 3 kwok nodes (one cordoned) named after the test namespace."""
    name = f"pool-{k8s_namespace}"
    make_kwok_nodes(k8s_api, pool=name, count=3)
    k8s_client.CoreV1Api(k8s_api).patch_node(f"{name}-2", {"spec": {"unschedulable": True}})
    return name


def test_pod_spec_runs_any_image_without_a_shell(kube: KubeClient, config: ActuatorConfig) -> None:
    puller = ImagePrepuller(kube, config)
    pod = puller.pod_manifest(prepull("p"), NodeName("n1"))
    spec = pod["spec"]

    assert spec["nodeName"] == "n1"
    assert spec["restartPolicy"] == "Never"
    init = spec["initContainers"][0]
    assert init["image"] == config.prepull.helper_image
    assert init["command"] == ["/bin/busybox", "cp", "/bin/busybox", "/prewarm/busybox"]
    main = spec["containers"][0]
    assert main["image"] == IMAGE
    # Runs a binary from the shared volume, not from the target image (which has no shell).
    assert main["command"] == ["/prewarm/busybox", "true"]
    assert main["imagePullPolicy"] == "IfNotPresent"
    assert spec["volumes"][0]["emptyDir"] is not None
    # The apiserver accepts it as a valid pod.
    path = PODS.path(config.namespace, pod["metadata"]["name"])
    kube.apply(path, pod, field_manager="prewarm", dry_run=True)


def test_pulls_on_every_schedulable_node_then_removes_pods(
    kube: KubeClient, config: ActuatorConfig, pool: str
) -> None:
    puller = ImagePrepuller(kube, config)
    action = prepull(pool)

    first = puller.step(action, now_s=1e9)
    assert first.pending == {f"{pool}-0", f"{pool}-1"}  # the cordoned node is skipped
    pods = prepull_pods(kube, config.namespace)
    assert sorted(p["spec"]["nodeName"] for p in pods) == [f"{pool}-0", f"{pool}-1"]  # type: ignore[index]

    names = {p["metadata"]["name"] for p in pods}  # type: ignore[index]
    puller.step(action, now_s=1e9)  # idempotent: no new pods (finished ones may be going away)
    assert {p["metadata"]["name"] for p in prepull_pods(kube, config.namespace)} <= names  # type: ignore[index]

    status = step_until_done(puller, action)

    assert status.succeeded == {f"{pool}-0", f"{pool}-1"}
    assert not status.failed
    assert not status.expired
    wait_for(lambda: prepull_pods(kube, config.namespace) == [], what="pre-pull pods removed")
    # Done stays done: the next tick creates nothing.
    assert puller.step(action, now_s=1e9).done
    assert prepull_pods(kube, config.namespace) == []


def test_unpullable_image_is_reported_and_cleaned_up(
    kube: KubeClient, config: ActuatorConfig, pool: str
) -> None:
    puller = ImagePrepuller(kube, config)
    action = prepull(pool, image="unpullable.invalid/model-server:v1")

    status = step_until_done(puller, action)

    assert set(status.failed) == {f"{pool}-0", f"{pool}-1"}
    assert all("ErrImagePull" in reason for reason in status.failed.values())
    wait_for(lambda: prepull_pods(kube, config.namespace) == [], what="failed pods removed")


def test_deadline_removes_unfinished_pods(
    kube: KubeClient, config: ActuatorConfig, pool: str
) -> None:
    puller = ImagePrepuller(kube, config)
    action = prepull(pool, deadline_s=1000.0)
    puller.step(action, now_s=999.0)
    assert len(prepull_pods(kube, config.namespace)) == 2

    status = puller.step(action, now_s=1001.0)  # past the deadline before kwok finished them

    assert status.expired or status.done
    wait_for(lambda: prepull_pods(kube, config.namespace) == [], what="expired pods removed")

    clock = iter([2000.0, 2001.0, 2002.0])
    with pytest.raises(DeadlineExceeded):
        ImagePrepuller(kube, config).run(
            prepull(pool, image="unpullable.invalid/x:1", deadline_s=1500.0),
            clock=lambda: next(clock),
            sleep=lambda _: None,
        )


def test_dry_run_creates_no_pods(kube: KubeClient, config: ActuatorConfig, pool: str) -> None:
    puller = ImagePrepuller(kube, config)

    status = puller.step(prepull(pool), now_s=1e9, dry_run=True)

    assert len(status.pending) == 2
    assert prepull_pods(kube, config.namespace) == []


def test_reconcile_removes_pulls_no_longer_planned(
    kube: KubeClient, config: ActuatorConfig, pool: str
) -> None:
    puller = ImagePrepuller(kube, config)
    puller.reconcile([prepull(pool, image="unpullable.invalid/stuck:1")], now_s=1e9)
    assert len(prepull_pods(kube, config.namespace)) == 2

    puller.reconcile([], now_s=1e9)

    wait_for(lambda: prepull_pods(kube, config.namespace) == [], what="stale pulls removed")
    assert puller.cleanup() == 0
