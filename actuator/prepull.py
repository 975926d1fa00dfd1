"""Image pre-pull: get an image onto every node of a pool before its deadline, for ANY image.

Owns one short-lived pod per (image, node), bound to the node with ``spec.nodeName`` (no scheduler
round trip, and a pod per node can be tracked to completion, unlike a DaemonSet):

- an init container from a small helper image copies its static busybox into an ``emptyDir``;
- the main container uses the *target* image and runs ``/prewarm/busybox true`` from that volume.

So the kubelet must pull the target image to start the main container, and the pod exits 0 at once
without needing a shell, ``true`` or any file inside the target image (distroless and scratch images
work). ``imagePullPolicy: IfNotPresent`` makes a node that already has the image finish in a second.

Which nodes: every node of the pool that can run a replica, i.e. schedulable and not reported
NotReady (a node that registered but has no Ready condition yet is included). A node that joins
the pool is found at the next step and gets its pod; one that is cordoned or NotReady gets none.

Credentials: a private image is pulled with what the model's own pods pull it with. The pod runs in
the namespace of the action's workload (Secrets are namespaced: a pod can only name Secrets of its
own namespace, so nothing is copied anywhere) with ``imagePullSecrets`` taken from the workload's
pod template and from the ServiceAccount its pods run as, plus ``prepull.helper_pull_secrets``
(for a helper image in a private registry; they must exist in that namespace too). An action with
no workload runs in ``config.namespace`` with the helper's secrets only. Prewarm's labels mark the
pods wherever they run, so cleanup finds them across namespaces.

Security: the pods meet the ``restricted`` Pod Security Standard (non-root numeric user
``prepull.run_as_user``, no privilege escalation, every capability dropped, the runtime's default
seccomp profile, read-only root filesystems); the copied busybox stays executable for that user
because an ``emptyDir`` is world-writable and ``cp`` keeps the source's 0755 mode.

Images are compared as a runtime resolves them (:mod:`actuator.images`): ``nginx`` and
``docker.io/library/nginx:latest`` are one image, with one set of pods. A reference no runtime
accepts fails that pre-pull with :class:`actuator.images.InvalidImageReference`; the others go on.

Tracking: :meth:`ImagePrepuller.step` creates the missing pods (idempotent: deterministic names,
server-side apply; a node that already has a pod for the image, in any namespace, gets no second
one), reads their status, and removes pods that finished or failed; past the action's deadline it
removes the rest and reports the nodes that did not make it. Completed (image, node) pairs are
remembered in memory, and a node whose ``status.images`` lists the image counts as done, so a
finished pull is not started again while the action stays in the plan.

Must not: leave pods behind after completion, the deadline, or the action leaving the plan; read
or copy Secrets (only their names are passed on; the kubelet reads them).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actuator.config import ActuatorConfig
from actuator.floors import workload_resource
from actuator.images import node_has_image, parse_image
from actuator.kube import MANAGED_SELECTOR, NODES, PODS, KubeClient, Obj, Resource, owner_labels
from actuator.names import short_hash
from common.errors import DeadlineExceeded, PrewarmError
from common.ids import NodeName, PoolName
from planner.actions import ImagePrepull, WorkloadRef

_log = logging.getLogger(__name__)

COMPONENT = "image-prepull"
IMAGE_LABEL = "prewarm.io/image-hash"
POOL_LABEL = "prewarm.io/pool"
IMAGE_ANNOTATION = "prewarm.io/image"
WORKLOAD_ANNOTATION = "prewarm.io/workload"
VOLUME_PATH = "/prewarm"
SERVICE_ACCOUNTS = Resource("v1", "serviceaccounts")
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


@dataclass(frozen=True, slots=True)
class PullContext:
    """Where a pre-pull pod runs and the Secrets it pulls with (names in that namespace)."""

    namespace: str
    pull_secrets: tuple[str, ...] = ()


def image_key(image: str) -> str:
    """The label value shared by every spelling of ``image`` (a hash of its canonical form).

    Raises :class:`actuator.images.InvalidImageReference` for a reference no runtime accepts.
    """
    return short_hash(parse_image(image).canonical, 12)


class ImagePrepuller:
    """Runs pre-pull pods (see the module docstring). One per daemon (it remembers results)."""

    def __init__(self, kube: KubeClient, config: ActuatorConfig) -> None:
        self._kube = kube
        self._config = config
        # Keyed by (image key, node): every spelling of an image shares its results.
        self._completed: set[tuple[str, NodeName]] = set()
        # Failed pulls are not retried while the action stays in the plan (a bad image name would
        # otherwise be re-created every tick); a new action (new image) starts afresh.
        self._failed: dict[tuple[str, NodeName], str] = {}

    def pod_name(self, image: str, node: NodeName) -> str:
        """Deterministic pod name for pulling ``image`` onto ``node`` (the same for every
        spelling of the image)."""
        return f"prewarm-pull-{image_key(image)}-{short_hash(node, 10)}"

    def pod_manifest(
        self, action: ImagePrepull, node: NodeName, *, context: PullContext | None = None
    ) -> Obj:
        """The pod that pulls ``action.image`` onto ``node`` (pure); ``context`` says where it
        runs and with which pull Secrets (default: ``config.namespace``, the helper's Secrets)."""
        prepull = self._config.prepull
        context = context or PullContext(self._config.namespace, tuple(prepull.helper_pull_secrets))
        binary = f"{VOLUME_PATH}/busybox"
        labels = {
            **owner_labels(COMPONENT),
            IMAGE_LABEL: image_key(action.image),
            POOL_LABEL: action.pool,
        }
        annotations = {
            IMAGE_ANNOTATION: action.image,
            "prewarm.io/deadline": str(int(action.deadline_s)),
        }
        if action.workload is not None:
            workload = action.workload
            annotations[WORKLOAD_ANNOTATION] = (
                f"{workload.kind}/{workload.namespace}/{workload.name}"
            )
        resources = {"requests": {"cpu": prepull.cpu_request, "memory": prepull.memory_request}}
        # The "restricted" Pod Security Standard, per container (the pod-level fields cover the
        # user and seccomp): a namespace that enforces it admits these pods.
        container_security = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        }
        spec: Obj = {
            # Bound directly: the pod must run on exactly this node, and binding skips the
            # scheduler (so it also works on a node that is full or cordoned for new work).
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            # A numeric user: the kubelet can only verify runAsNonRoot for a numeric UID, and the
            # target image's USER (a name, or root) must not matter.
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": prepull.run_as_user,
                "runAsGroup": prepull.run_as_user,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
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
                    "securityContext": container_security,
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
                    "securityContext": container_security,
                }
            ],
        }
        if context.pull_secrets:
            spec["imagePullSecrets"] = [{"name": name} for name in context.pull_secrets]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name(action.image, node),
                "namespace": context.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": spec,
        }

    def pull_context(self, workload: WorkloadRef | None) -> PullContext:
        """Where a pull for ``workload`` runs and its pull Secrets (reads the workload and its
        ServiceAccount; see the module docstring). A workload or ServiceAccount that does not
        exist contributes no Secrets; any other API failure raises."""
        helper = tuple(self._config.prepull.helper_pull_secrets)
        if workload is None:
            return PullContext(self._config.namespace, helper)
        found = self._kube.get(workload_resource(workload).path(workload.namespace, workload.name))
        pod_spec = workload_pod_spec(found) if found is not None else {}
        names = _secret_names(pod_spec)
        # The ServiceAccount admission plugin gives a pod its ServiceAccount's imagePullSecrets
        # only when the pod names none itself; both are taken here, since either may be the one
        # that reaches the registry (and a Secret that grants nothing does no harm).
        account = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default"
        sa = self._kube.get(SERVICE_ACCOUNTS.path(workload.namespace, str(account)))
        names += _secret_names(sa or {})
        names += helper
        return PullContext(workload.namespace, tuple(dict.fromkeys(names)))

    def nodes(self, pool: PoolName) -> list[Obj]:
        """The nodes of ``pool`` that can run a replica: schedulable (cordoned nodes are about to
        go away) and not reported NotReady."""
        nodes = self._kube.list(NODES.path(), label_selector=f"{self._config.pool_label}={pool}")
        return [node for node in nodes if _can_run_pods(node)]

    def step(self, action: ImagePrepull, *, now_s: float, dry_run: bool = False) -> PrepullStatus:
        """Advance ``action`` once: create missing pods, read results, remove finished pods.

        Idempotent; call it every tick (or use :meth:`run`). Past ``action.deadline_s`` every
        remaining pod is removed and the status is ``expired`` with the unfinished nodes pending.
        Raises :class:`actuator.images.InvalidImageReference` for an image no runtime accepts,
        and the API's errors.
        """
        dry_run = dry_run or self._config.dry_run
        manager = self._config.field_manager
        image = parse_image(action.image)
        key = short_hash(image.canonical, 12)
        # Every pod of the image, in any namespace and pool: a node never gets a second one.
        by_node = {pod["spec"].get("nodeName"): pod for pod in self._pods(key)}
        ours = {
            node: pod
            for node, pod in by_node.items()
            if (pod["metadata"].get("labels") or {}).get(POOL_LABEL) == action.pool
        }
        succeeded: set[NodeName] = set()
        failed: dict[NodeName, str] = {}
        pending: set[NodeName] = set()
        expired = now_s >= action.deadline_s
        context: PullContext | None = None
        for node in self.nodes(action.pool):
            name = NodeName(node["metadata"]["name"])
            if (key, name) in self._completed or node_has_image(node, image):
                succeeded.add(name)
                self._completed.add((key, name))
                continue
            if (key, name) in self._failed:
                failed[name] = self._failed[(key, name)]
                continue
            pod = by_node.get(name)
            outcome = pod_outcome(pod) if pod is not None else None
            if outcome == "succeeded":
                succeeded.add(name)
                if not dry_run:
                    self._completed.add((key, name))
            elif outcome is not None and outcome != "running":
                failed[name] = outcome
                if not dry_run:
                    self._failed[(key, name)] = outcome
            else:
                pending.add(name)
                if pod is None and not expired:
                    context = context or self.pull_context(action.workload)
                    manifest = self.pod_manifest(action, name, context=context)
                    path = PODS.path(context.namespace, manifest["metadata"]["name"])
                    self._kube.apply(path, manifest, field_manager=manager, dry_run=dry_run)
        status = PrepullStatus(
            image=action.image,
            pool=action.pool,
            succeeded=frozenset(succeeded),
            failed=failed,
            pending=frozenset(pending),
            expired=expired and bool(pending),
        )
        # Clean up this pool's pods: finished ones always; all of them once done or past the
        # deadline (another pool's pods of the same image are that pool's pull's to remove).
        for node_name, pod in ours.items():
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
        """Step every planned pre-pull and remove pods of (image, pool) pairs no longer planned.

        One status per action, in order. Actions naming the same image (in any spelling) for the
        same pool are one pull: the first one's workload decides the namespace and Secrets, the
        latest deadline holds. A failure of one pre-pull (an invalid image reference, a refused
        API call) is that status's ``error`` and never stops the others.
        """
        groups: dict[tuple[PoolName, str], ImagePrepull] = {}
        keys: list[tuple[PoolName, str] | PrewarmError] = []
        for action in actions:
            try:
                group = (action.pool, image_key(action.image))
            except PrewarmError as error:
                _log.warning("pre-pull of %r on pool %s skipped: %s", action.image, action.pool,
                             error)  # fmt: skip
                keys.append(error)
                continue
            keys.append(group)
            first = groups.get(group)
            if first is None:
                groups[group] = action
            elif action.deadline_s > first.deadline_s:
                groups[group] = dataclasses.replace(first, deadline_s=action.deadline_s)
        stepped: dict[tuple[PoolName, str], PrepullStatus] = {}
        for group, merged in groups.items():
            try:
                stepped[group] = self.step(merged, now_s=now_s, dry_run=dry_run)
            except PrewarmError as error:
                stepped[group] = _error_status(merged, error)
        statuses: list[PrepullStatus] = []
        for action, group_or_error in zip(actions, keys, strict=True):
            if isinstance(group_or_error, PrewarmError):
                statuses.append(_error_status(action, group_or_error))
            else:
                statuses.append(dataclasses.replace(stepped[group_or_error], image=action.image))
        planned = {(key, str(pool)) for pool, key in groups}
        for pod in self._pods(None):
            labels = pod["metadata"].get("labels") or {}
            if (labels.get(IMAGE_LABEL), labels.get(POOL_LABEL)) not in planned:
                self._delete(pod, dry_run=dry_run or self._config.dry_run)
        return statuses

    def cleanup(self, *, dry_run: bool = False) -> int:
        """Remove every pre-pull pod, in every namespace (the cleanup path); returns how many
        were removed."""
        pods = self._pods(None)
        for pod in pods:
            self._delete(pod, dry_run=dry_run or self._config.dry_run)
        return len(pods)

    def _pods(self, key: str | None) -> list[Obj]:
        """Prewarm's pre-pull pods of the image whose label value is ``key`` (None: all), in
        every namespace (they run in the workloads' namespaces)."""
        selector = f"{MANAGED_SELECTOR},app.kubernetes.io/component={COMPONENT}"
        if key is not None:
            selector += f",{IMAGE_LABEL}={key}"
        pods = self._kube.list(PODS.path(), label_selector=selector)
        # A pod being deleted is already on its way out (kubelet or kwok finishes the delete).
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def _delete(self, pod: Obj, *, dry_run: bool) -> None:
        metadata = pod["metadata"]
        path = PODS.path(metadata.get("namespace") or self._config.namespace, metadata["name"])
        self._kube.delete(path, dry_run=dry_run)


def _error_status(action: ImagePrepull, error: PrewarmError) -> PrepullStatus:
    empty: frozenset[NodeName] = frozenset()
    return PrepullStatus(action.image, action.pool, empty, {}, empty, False, error)


def _can_run_pods(node: Obj) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    # Just registered, no Ready condition reported yet: it is coming up, so pull ahead of it.
    return True


_POD_SPEC_PATHS = (
    ("template", "spec"),
    ("predictor",),
    ("leaderWorkerTemplate", "workerTemplate", "spec"),
)


def workload_pod_spec(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec a serving workload's pods are made from (empty when its kind has none known):
    ``spec.template.spec`` (Deployment, StatefulSet, Knative Service), ``spec.predictor`` (KServe
    InferenceService: the pod fields sit inline there) or
    ``spec.leaderWorkerTemplate.workerTemplate.spec`` (LeaderWorkerSet)."""
    spec = workload.get("spec") or {}
    for path in _POD_SPEC_PATHS:
        found: Any = spec
        for part in path:
            found = found.get(part) if isinstance(found, Mapping) else None
        if isinstance(found, Mapping):
            return found
    return {}


def _secret_names(holder: Mapping[str, Any]) -> list[str]:
    """The names in ``holder["imagePullSecrets"]`` (a pod spec or a ServiceAccount)."""
    return [
        str(ref["name"])
        for ref in holder.get("imagePullSecrets") or []
        if isinstance(ref, Mapping) and ref.get("name")
    ]


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
