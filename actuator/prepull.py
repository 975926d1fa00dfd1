"""Image pre-pull: get an image onto every node of a pool before its deadline, for ANY image.

Owns one short-lived pod per (image, node), bound to the node with ``spec.nodeName`` (no scheduler
round trip, and a pod per node can be tracked to completion, unlike a DaemonSet):

- an init container from a small helper image copies its static busybox into an ``emptyDir``;
- the main container uses the *target* image and runs ``/prewarm/busybox true`` from that volume.

So the kubelet must pull the target image to start the main container, and the pod exits 0 at once
without needing a shell, ``true`` or any file inside the target image (distroless and scratch images
work). ``imagePullPolicy: IfNotPresent`` makes a node that already has the image finish in a second.

Tracking: :meth:`ImagePrepuller.step` creates the missing pods (idempotent: deterministic names,
server-side apply), reads their status, and removes pods that finished or failed; past the action's
deadline it removes the rest and reports the nodes that did not make it. Completed (image, node)
pairs are remembered in memory, and a node whose ``status.images`` lists the image counts as done,
so a finished pull is not started again while the action stays in the plan.

Must not: leave pods behind after completion, the deadline, or the action leaving the plan.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from actuator.config import ActuatorConfig
from actuator.kube import MANAGED_SELECTOR, NODES, PODS, KubeClient, Obj, owner_labels
from actuator.names import short_hash
from common.errors import DeadlineExceeded, PrewarmError
from common.ids import NodeName, PoolName
from planner.actions import ImagePrepull

_log = logging.getLogger(__name__)

COMPONENT = "image-prepull"
IMAGE_LABEL = "prewarm.io/image-hash"
POOL_LABEL = "prewarm.io/pool"
IMAGE_ANNOTATION = "prewarm.io/image"
VOLUME_PATH = "/prewarm"
# Kubelet reasons for an image that will not arrive without a change (a wrong name, no access).
_PULL_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


@dataclass(frozen=True, slots=True)
class PrepullStatus:
    """Where one pre-pull stands. ``done`` when every node either succeeded or failed."""

    image: str
    pool: PoolName
    succeeded: frozenset[NodeName]
    failed: dict[NodeName, str] = field(hash=False)
    pending: frozenset[NodeName]
    expired: bool
    error: PrewarmError | None = None

    @property
    def done(self) -> bool:
        return not self.pending


def _image_key(image: str) -> str:
    return short_hash(image, 12)


class ImagePrepuller:
    """Runs pre-pull pods in ``config.namespace``. One per daemon (it remembers results)."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config
        self._completed: set[tuple[str, NodeName]] = set()
        # Failed pulls are not retried while the action stays in the plan (a bad image name would
        # otherwise be re-created every tick); a new action (new image) starts afresh.
        self._failed: dict[tuple[str, NodeName], str] = {}

    def pod_name(self, image: str, node: NodeName) -> str:
        """Deterministic pod name for pulling ``image`` onto ``node``."""
        return f"prewarm-pull-{_image_key(image)}-{short_hash(node, 10)}"

    def pod_manifest(self, action: ImagePrepull, node: NodeName) -> Obj:
        """The pod that pulls ``action.image`` onto ``node`` (pure)."""
        prepull = self._config.prepull
        binary = f"{VOLUME_PATH}/busybox"
        labels = {
            **owner_labels(COMPONENT),
            IMAGE_LABEL: _image_key(action.image),
            POOL_LABEL: action.pool,
        }
        resources = {"requests": {"cpu": prepull.cpu_request, "memory": prepull.memory_request}}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name(action.image, node),
                "namespace": self._config.namespace,
                "labels": labels,
                "annotations": {
                    IMAGE_ANNOTATION: action.image,
                    "prewarm.io/deadline": str(int(action.deadline_s)),
                },
            },
            "spec": {
                # Bound directly: the pod must run on exactly this node, and binding skips the
                # scheduler (so it also works on a node that is full or cordoned for new work).
                "nodeName": node,
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 0,
                # Taints (GPU, dedicated pools) must not keep the image off a pool's nodes.
                "tolerations": [{"operator": "Exists"}],
                "volumes": [{"name": "prewarm-bin", "emptyDir": {"sizeLimit": "16Mi"}}],
                "initContainers": [
                    {
                        "name": "copy-noop",
                        "image": prepull.helper_image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [prepull.helper_binary, "cp", prepull.helper_binary, binary],
                        "volumeMounts": [{"name": "prewarm-bin", "mountPath": VOLUME_PATH}],
                        "resources": resources,
                    }
                ],
                "containers": [
                    {
                        "name": "pull",
                        "image": action.image,
                        "imagePullPolicy": "IfNotPresent",
                        # busybox dispatches on its first argument: "true" exits 0 at once.
                        "command": [binary, "true"],
                        "volumeMounts": [
                            {"name": "prewarm-bin", "mountPath": VOLUME_PATH, "readOnly": True}
                        ],
                        "resources": resources,
                    }
                ],
            },
        }

    def nodes(self, pool: PoolName) -> list[Obj]:
        """The schedulable nodes of ``pool`` (cordoned nodes are about to go away)."""
        nodes = self._kube.list(NODES.path(), label_selector=f"{self._config.pool_label}={pool}")
        return [node for node in nodes if not (node.get("spec") or {}).get("unschedulable")]

    def step(self, action: ImagePrepull, *, now_s: float, dry_run: bool = False) -> PrepullStatus:
        """Advance ``action`` once: create missing pods, read results, remove finished pods.

        Idempotent; call it every tick (or use :meth:`run`). Past ``action.deadline_s`` every
        remaining pod is removed and the status is ``expired`` with the unfinished nodes pending.
        """
        dry_run = dry_run or self._config.dry_run
        manager = self._config.field_manager
        pods = {pod["spec"].get("nodeName"): pod for pod in self._pods(action.image)}
        succeeded: set[NodeName] = set()
        failed: dict[NodeName, str] = {}
        pending: set[NodeName] = set()
        expired = now_s >= action.deadline_s
        for node in self.nodes(action.pool):
            name = NodeName(node["metadata"]["name"])
            if (action.image, name) in self._completed or _node_has_image(node, action.image):
                succeeded.add(name)
                self._completed.add((action.image, name))
                continue
            if (action.image, name) in self._failed:
                failed[name] = self._failed[(action.image, name)]
                continue
            pod = pods.get(name)
            outcome = pod_outcome(pod) if pod is not None else None
            if outcome == "succeeded":
                succeeded.add(name)
                if not dry_run:
                    self._completed.add((action.image, name))
            elif outcome is not None and outcome != "running":
                failed[name] = outcome
                if not dry_run:
                    self._failed[(action.image, name)] = outcome
            else:
                pending.add(name)
                if pod is None and not expired:
                    manifest = self.pod_manifest(action, name)
                    path = PODS.path(self._config.namespace, manifest["metadata"]["name"])
                    self._kube.apply(path, manifest, field_manager=manager, dry_run=dry_run)
        status = PrepullStatus(
            image=action.image,
            pool=action.pool,
            succeeded=frozenset(succeeded),
            failed=failed,
            pending=frozenset(pending),
            expired=expired and bool(pending),
        )
        # Clean up: finished pods always; every pod of the image once done or past the deadline.
        for node_name, pod in pods.items():
            finished = node_name in succeeded or node_name in failed
            if finished or status.done or expired:
                self._delete(pod, dry_run=dry_run)
        if status.expired:
            _log.warning(
                "pre-pull of %s on pool %s missed its deadline on %d node(s): %s",
                action.image, action.pool, len(status.pending), sorted(status.pending),
            )  # fmt: skip
        return status

    def run(
        self,
        action: ImagePrepull,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        interval_s: float = 1.0,
    ) -> PrepullStatus:
        """Step ``action`` until done or past its deadline (then raise DeadlineExceeded)."""
        while True:
            status = self.step(action, now_s=clock())
            if status.done:
                return status
            if status.expired:
                raise DeadlineExceeded(
                    f"pre-pull of {action.image} on pool {action.pool} missed its deadline on "
                    f"{sorted(status.pending)}; the registry may be slow or the nodes gone"
                )
            sleep(interval_s)

    def reconcile(
        self, actions: Sequence[ImagePrepull], *, now_s: float, dry_run: bool = False
    ) -> list[PrepullStatus]:
        """Step every planned pre-pull and remove pods of images no longer planned.

        A failure on one pre-pull is that status's ``error`` and never stops the others.
        """
        statuses: list[PrepullStatus] = []
        for action in actions:
            try:
                statuses.append(self.step(action, now_s=now_s, dry_run=dry_run))
            except PrewarmError as error:
                empty: frozenset[NodeName] = frozenset()
                statuses.append(
                    PrepullStatus(action.image, action.pool, empty, {}, empty, False, error)
                )
        planned = {_image_key(action.image) for action in actions}
        for pod in self._pods(None):
            if pod["metadata"]["labels"].get(IMAGE_LABEL) not in planned:
                self._delete(pod, dry_run=dry_run or self._config.dry_run)
        return statuses

    def cleanup(self, *, dry_run: bool = False) -> int:
        """Remove every pre-pull pod (the cleanup path); returns how many were removed."""
        pods = self._pods(None)
        for pod in pods:
            self._delete(pod, dry_run=dry_run or self._config.dry_run)
        return len(pods)

    def _pods(self, image: str | None) -> list[Obj]:
        selector = f"{MANAGED_SELECTOR},app.kubernetes.io/component={COMPONENT}"
        if image is not None:
            selector += f",{IMAGE_LABEL}={_image_key(image)}"
        pods = self._kube.list(PODS.path(self._config.namespace), label_selector=selector)
        # A pod being deleted is already on its way out (kubelet or kwok finishes the delete).
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def _delete(self, pod: Obj, *, dry_run: bool) -> None:
        path = PODS.path(self._config.namespace, pod["metadata"]["name"])
        self._kube.delete(path, dry_run=dry_run)


def _node_has_image(node: Obj, image: str) -> bool:
    # The kubelet reports (up to 50 of) the node's images in status.images, by every name it has.
    for entry in (node.get("status") or {}).get("images") or []:
        if image in (entry.get("names") or []):
            return True
    return False


def pod_outcome(pod: Obj) -> str:
    """ "succeeded", "running" (not finished yet) or a failure reason."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase == "Succeeded":
        return "succeeded"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        reason = (state.get("waiting") or {}).get("reason")
        if reason in _PULL_FAILURES:
            message = (state.get("waiting") or {}).get("message") or ""
            return f"{reason}: {message}".strip(": ")
        terminated = state.get("terminated")
        # Exit code != 0 still means the image was pulled (the container started); a non-zero
        # code can only come from an unusual helper, so report it rather than retry forever.
        if terminated is not None and terminated.get("exitCode") == 0:
            return "succeeded"
    if phase == "Failed":
        return f"pod failed: {status.get('reason') or status.get('message') or 'unknown'}"
    return "running"
