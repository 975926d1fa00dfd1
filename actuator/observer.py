"""The actuator's read half: the cluster and its GPU agents as a :class:`ClusterSnapshot`.

Owns: turning Kubernetes objects and each node's agent ``Status`` into the planner's observed state
(pools, nodes, models), and the stage durations measured from them (lead times), each reported
once. Must not: write anything, or decide anything (the cycle does).

Kubernetes reads go through the actuator's :class:`KubeClient` (retries, typed errors) in a worker
thread; a failure there fails the observation (the daemon skips that tick). The agents are asked
concurrently on the event loop, each within ``agent.status_timeout_s``; an agent that cannot be
found, does not answer in time, refuses or answers something unreadable only marks its node
unknown for this tick (``agent_seen=False``, no holdings), logged once per outage.

What is read, and the quirks:

- Pools are the values of ``actuator.pool_label`` on nodes. A pool's GPUs are the sum of
  ``status.allocatable["nvidia.com/gpu"]`` over its Ready nodes; GPUs requested by running or
  pending-bound pods are used, *except* prewarm's own placeholders: they are preempted the moment a
  real pod needs the GPU, so for planning they count as free (and are reported separately, per
  pool and per node).
- Karpenter NodePools (:mod:`actuator.nodepools`, when ``karpenter.sh/v1`` is served) are pools
  too, with or without nodes: a NodePool scaled to zero is a pool with 0 free GPUs, so a model of
  it needs a node and its lead time counts the node's provisioning from zero. Listing them is
  refused (403): logged, and pools are known from their nodes only.
- GPU memory per pool comes from the GPU feature discovery label ``nvidia.com/gpu.memory`` (MiB)
  when present, else from the largest GPU an agent of the pool reports, else from the NodePool's
  ``karpenter.k8s.aws/instance-gpu-memory`` requirement, else the planner's default.
- Nodes: every Ready node of a pool is a :class:`NodeState`. Its agent is the Running pod that
  ``agent.label_selector`` selects in ``namespace`` on that node, called where
  :func:`actuator.agents.agent_address` says (address annotation, else pod IP and ``grpc`` port).
  From ``Status``: ``free_gpu_bytes`` = sum over GPUs of free minus headroom (each never below 0;
  0 without a GPU), ``free_host_bytes`` = the host tier's capacity minus used, ``holdings`` = each
  model's fastest tier. From the pods: ``placeholder_gpus`` (prewarm's placeholder pods bound to
  it) and ``running``: a model runs on a node when a pod bound to it, not terminating, lies in the
  namespace of the model's workload (the catalog's ``workload``, else the default Deployment) and
  matches that workload's ``spec.selector`` (``matchLabels`` and ``matchExpressions``; a plain map
  is read as ``matchLabels``). A workload that is missing or has an empty selector runs nowhere
  (an empty selector would claim every pod of its namespace).
- A model's replicas are its workload's ``status.readyReplicas``; starting replicas are
  ``spec.replicas - readyReplicas`` (never negative). An image counts as cached in a pool only
  when *every* Ready, schedulable node of the pool lists it in ``status.images`` (names compared
  as a runtime resolves them, :func:`actuator.images.node_has_image`: ``vllm/x`` is
  ``docker.io/vllm/x:latest``, a digest matches a ``repo@sha256:...`` name): a replica may land on
  any of them, and a node that just joined has nothing yet. A pool with no such node, or a
  catalog image that is not a valid reference, is not cached. ``ModelState.tier`` is the
  fastest tier below GPU that any answering agent of the model's pool holds it in; a model in GPU
  memory counts as HOST there (a replica on that node attaches to it at least as fast as it
  would read host memory).

Stage observations (:class:`planner.leadtime.StageObservation`), each reported once:

- ``Stage.NODE`` (key: pool): ``creationTimestamp`` to the Ready condition's
  ``lastTransitionTime`` of a node first listed after this observer's first observation, when it
  is first seen Ready. Nodes listed at the first observation are never measured: their Ready
  transition may be a later kubelet restart, not their provisioning.
- ``Stage.WEIGHTS_REMOTE`` / ``WEIGHTS_DISK`` / ``WEIGHTS_HOST`` (key: pool, ``gb`` = bytes/1e9):
  each agent's latest load of a model as it reports it (``ModelHolding.load_duration_s``, by the
  tier the load started from), once per load (its ``loaded_at``), including loads that finished
  before this observer started. A load that only reached the disk tier is a fetch, not a load into
  memory, and is not reported. A load into host memory counts as the load: on a node without a GPU
  host memory is what an engine reads from; on a GPU node it leaves out the host -> GPU hop.
- ``Stage.IMAGE`` (key: the catalog's image, ``gb`` = the event's image size, else the catalog's
  ``image_gb``): a kubelet ``Pulled`` event's duration, once per event, for an image the catalog
  names (compared as a runtime resolves names, :func:`actuator.kubelet.canonical_image`).
- ``Stage.REPLICA`` (key: model): a serving pod's last container start to Ready, once per pod
  (shown by ``prewarm explain``, not planned with: it contains the weights and compile stages).
- ``Stage.WAKE`` (key: model): each wake of a sleeping replica the actuator timed
  (:mod:`actuator.engines`, given as ``engines``), which also says how many of a sleep-capable
  model's ready replicas sleep (``ModelState.asleep_replicas``).
- Not measured here: compiles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from actuator.agent_status import (
    AgentStatusReader,
    AgentView,
    ChannelFactory,
    LoadLedger,
    held_tier,
    node_state,
)
from actuator.agents import agent_address, running_agent_pods
from actuator.capacity import COMPONENT as PLACEHOLDER_COMPONENT
from actuator.config import ActuatorConfig
from actuator.engines import Engines, ready_pods
from actuator.floors import workload_resource
from actuator.images import (
    ImageReference,
    InvalidImageReference,
    holds_image,
    node_image_names,
    parse_image,
    reported_images,
)
from actuator.kube import EVENTS, NODES, PODS, KubeClient, Obj
from actuator.kubelet import canonical_image, image_pull, replica_start_s, rfc3339_s
from actuator.nodepools import NodePoolInfo, NodePoolReader
from actuator.placeholder_shapes import GPU_RESOURCE
from actuator.selectors import selector_matches
from actuator.workloads import replica_view
from common.errors import PrewarmError
from common.ids import ModelId, NodeName, PoolName
from planner.catalog import GB, Catalog
from planner.leadtime import Stage, StageObservation
from planner.observed import ClusterSnapshot
from planner.planner import ModelState, NodeState, PoolState, workload_for

_log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_COMPONENT_LABEL = "app.kubernetes.io/component"


@dataclass(frozen=True, slots=True)
class _Cluster:
    """What one observation read from the Kubernetes API."""

    nodes: list[Obj]
    pods: list[Obj]
    agent_pods: list[Obj]
    workloads: dict[ModelId, Obj | None]
    pulls: list[Obj]
    """The kubelets' ``Pulled`` events."""
    asleep: dict[ModelId, int]
    """Per sleep-capable model, its ready replicas whose engine sleeps."""
    node_pools: dict[PoolName, NodePoolInfo] = field(default_factory=dict)
    """Karpenter NodePools by pool (none without Karpenter)."""


@dataclass(slots=True)
class _Memory:
    """What the observer carries between observations (so each duration is reported once)."""

    first: bool = True
    nodes_known: set[str] = field(default_factory=set)
    """Node uids already measured, or listed at the first observation (never measured)."""
    loads: LoadLedger = field(default_factory=LoadLedger)
    """The agents' loads already reported."""
    down: dict[NodeName, str] = field(default_factory=dict)
    """Nodes whose agent is unknown, with the problem already logged."""
    measured: set[str] = field(default_factory=set)
    """Uids of the Pulled events and serving pods already measured (those still listed)."""


class KubeClusterObserver:
    """Observes pools, nodes, their agents, placeholder capacity and workloads.

    ``channel_factory`` makes the gRPC channel to an agent address (production default: plaintext,
    as :class:`actuator.agents.AgentActuator`). Call :meth:`close` at shutdown.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        config: ActuatorConfig,
        catalog: Catalog,
        channel_factory: ChannelFactory = grpc.aio.insecure_channel,
        engines: Engines | None = None,
    ) -> None:
        self._kube = kube
        self._config = config
        self._catalog = catalog
        self._agents = AgentStatusReader(config.agent, channel_factory=channel_factory)
        self._engines = engines
        self._memory = _Memory()
        self._node_pools = NodePoolReader(kube, config)

    async def close(self) -> None:
        """Close every agent channel."""
        await self._agents.close()

    async def observe(self, *, now_s: float, models: Sequence[ModelId]) -> ClusterSnapshot:
        """A snapshot of the pools, their Ready nodes and every model in ``models``."""
        del now_s  # durations come from the objects' own timestamps, not the daemon's clock
        models = list(models)
        cluster = await asyncio.to_thread(self._read, models)
        targets: dict[NodeName, str] = {}
        views: dict[NodeName, AgentView] = {}
        agents = running_agent_pods(cluster.agent_pods)
        for node in cluster.nodes:
            name = NodeName(node["metadata"]["name"])
            if not _ready(node):
                continue
            pod = agents.get(name)
            if pod is None:
                views[name] = AgentView(problem="no Running agent pod on the node")
                continue
            try:
                targets[name] = agent_address(pod, default_port=self._config.agent.port)
            except PrewarmError as error:
                views[name] = AgentView(problem=str(error))
        views.update(await self._agents.ask(targets))
        return self._snapshot(cluster, views, models)

    # ------------------------------------------------------------------ Kubernetes, in a thread

    def _read(self, models: list[ModelId]) -> _Cluster:
        config = self._config
        nodes = self._kube.list(NODES.path(), label_selector=config.pool_label)
        pods = self._kube.list(
            PODS.path(), field_selector="status.phase!=Succeeded,status.phase!=Failed"
        )
        agent_pods = self._kube.list(
            PODS.path(config.namespace), label_selector=config.agent.label_selector
        )
        workloads: dict[ModelId, Obj | None] = {}
        for model in models:
            workload = workload_for(self._catalog.spec(model))
            path = workload_resource(workload).path(workload.namespace, workload.name)
            # InferenceServices and Knative Services: replicas counted from their pods.
            workloads[model] = replica_view(workload, self._kube.get(path), pods)
        pulls = self._kube.list(EVENTS.path(), field_selector="reason=Pulled")
        asleep: dict[ModelId, int] = {}
        if self._engines is not None:
            for model in set(self._engines.models()) & set(models):
                # The pods and workloads this observation already read, not a second listing.
                namespace = workload_for(self._catalog.spec(model)).namespace
                ready = ready_pods(workloads.get(model), pods, namespace)
                asleep[model] = self._engines.asleep(model, ready)
        return _Cluster(
            nodes=nodes,
            pods=pods,
            agent_pods=agent_pods,
            workloads=workloads,
            pulls=pulls,
            asleep=asleep,
            node_pools=self._node_pools.read_or_none(),
        )

    # ---------------------------------------------------------------------- agents, concurrently

    # ------------------------------------------------------------------------------ assembling

    def _snapshot(
        self, cluster: _Cluster, views: Mapping[NodeName, AgentView], models: list[ModelId]
    ) -> ClusterSnapshot:
        memory = self._memory
        pool_label = self._config.pool_label
        pool_of: dict[str, PoolName] = {}
        allocatable: dict[PoolName, int] = {}
        label_memory: dict[PoolName, int] = {}
        agent_memory: dict[PoolName, int] = {}
        images: dict[PoolName, list[list[ImageReference]]] = {}
        observations: list[StageObservation] = []
        ready_nodes: list[tuple[NodeName, PoolName]] = []
        present_uids: set[str] = set()
        for node in cluster.nodes:
            metadata = node["metadata"]
            name = NodeName(metadata["name"])
            pool = PoolName(metadata["labels"][pool_label])
            pool_of[name] = pool
            allocatable.setdefault(pool, 0)
            images.setdefault(pool, [])
            uid = str(metadata.get("uid") or name)
            present_uids.add(uid)
            if memory.first:
                memory.nodes_known.add(uid)
            if not _ready(node):
                continue
            ready_nodes.append((name, pool))
            if uid not in memory.nodes_known:
                memory.nodes_known.add(uid)
                seconds = _provisioning_s(node)
                if seconds is not None:
                    observations.append(StageObservation(Stage.NODE, str(pool), seconds))
            status = node.get("status") or {}
            allocatable[pool] += _quantity((status.get("allocatable") or {}).get(GPU_RESOURCE))
            label_mib = (metadata.get("labels") or {}).get("nvidia.com/gpu.memory")
            if label_mib and str(label_mib).isdigit():
                label_memory[pool] = max(label_memory.get(pool, 0), int(label_mib) * _MIB)
            # A cordoned node takes no new replica (and is usually about to go away), so it
            # neither needs the image nor keeps the pool from counting as cached.
            if not (node.get("spec") or {}).get("unschedulable"):
                images[pool].append(reported_images(node_image_names(node)))
        memory.nodes_known &= present_uids

        used: dict[PoolName, int] = {}
        placeholders: dict[PoolName, int] = {}
        node_placeholders: dict[str, int] = {}
        for pod in cluster.pods:
            node_name = (pod.get("spec") or {}).get("nodeName") or ""
            pod_pool = pool_of.get(node_name)
            labels = pod["metadata"].get("labels") or {}
            gpus = _pod_gpus(pod)
            if labels.get(_COMPONENT_LABEL) == PLACEHOLDER_COMPONENT:
                owner = pod_pool or PoolName(labels.get("prewarm.io/pool", ""))
                if owner:
                    placeholders[owner] = placeholders.get(owner, 0) + gpus
                if node_name:
                    node_placeholders[node_name] = node_placeholders.get(node_name, 0) + gpus
                continue
            if pod_pool is not None:
                used[pod_pool] = used.get(pod_pool, 0) + gpus
        serving = _serving_pods(cluster, self._catalog)
        running = {
            model: {str(pod["spec"]["nodeName"]) for pod in pods} for model, pods in serving.items()
        }
        observations += self._starts(cluster, serving)

        states: list[NodeState] = []
        for name, pool in ready_nodes:
            view = views.get(name) or AgentView(problem="not asked")
            problem = view.problem
            observed: NodeState | None = None
            if view.status is not None:
                try:
                    observed = node_state(name, pool, view.status)
                    observations += memory.loads.new_loads(name, pool, view.status)
                except PrewarmError as error:
                    observed = None  # an unknown tier: nothing of this answer is trusted
                    problem = f"it answered a Status this daemon cannot read: {error}"
                else:
                    largest = max((g.total_bytes for g in view.status.gpus), default=0)
                    agent_memory[pool] = max(agent_memory.get(pool, 0), largest)
            seen = observed is not None
            self._log_outage(name, seen, problem)
            observed = observed or NodeState(name=name, pool=pool, free_gpu_bytes=0)
            states.append(
                NodeState(
                    name=name,
                    pool=pool,
                    free_gpu_bytes=observed.free_gpu_bytes,
                    free_host_bytes=observed.free_host_bytes,
                    holdings=observed.holdings,
                    running=frozenset(m for m, nodes in running.items() if name in nodes),
                    placeholder_gpus=node_placeholders.get(name, 0),
                    agent_seen=seen,
                )
            )
        listed = set(pool_of)
        memory.loads.keep_only(listed)
        memory.down = {n: why for n, why in memory.down.items() if n in listed}
        memory.first = False

        node_pools = cluster.node_pools
        for pool in node_pools:
            allocatable.setdefault(pool, 0)  # a NodePool with no node yet: no free GPU
        pools = {
            pool: PoolState(
                pool=pool,
                free_gpus=max(0, allocatable[pool] - used.get(pool, 0)),
                gpu_memory_bytes=label_memory.get(pool)
                or agent_memory.get(pool)
                or (node_pools[pool].gpu_memory_bytes if pool in node_pools else None)
                or 80 * GB,
            )
            for pool in allocatable
        }
        model_states = {
            model: self._model_state(
                model, cluster.workloads.get(model), images, states, cluster.asleep.get(model, 0)
            )
            for model in models
        }
        return ClusterSnapshot(
            models=model_states,
            pools=pools,
            nodes=tuple(states),
            placeholder_gpus=placeholders,
            stage_observations=tuple(observations),
        )

    def _starts(
        self, cluster: _Cluster, serving: Mapping[ModelId, list[Obj]]
    ) -> list[StageObservation]:
        """Image pulls (``Stage.IMAGE``, keyed by the catalog's image, learned as GB/s) and
        replica starts (``Stage.REPLICA``, keyed by model) not reported before."""
        memory = self._memory
        listed: set[str] = set()
        found: list[StageObservation] = []
        images: dict[str, tuple[str, float]] = {}
        for model in cluster.workloads:
            spec = self._catalog.spec(model)
            try:
                images[canonical_image(spec.image)] = (spec.image, spec.image_gb)
            except InvalidImageReference:
                continue  # reported by the pre-pull of that image; nothing to measure here
        for event in cluster.pulls:
            uid = str(event["metadata"].get("uid") or event["metadata"].get("name"))
            listed.add(uid)
            pull = image_pull(str(event.get("message") or ""))
            if uid in memory.measured or pull is None:
                continue
            memory.measured.add(uid)
            try:
                known = images.get(canonical_image(pull.image))
            except InvalidImageReference:
                known = None
            if known is not None:
                gb = pull.size_bytes / 1e9 if pull.size_bytes else known[1]
                found.append(StageObservation(Stage.IMAGE, known[0], pull.seconds, gb))
        for model, pods in serving.items():
            for pod in pods:
                uid = str(pod["metadata"].get("uid") or pod["metadata"].get("name"))
                listed.add(uid)
                seconds = replica_start_s(pod)
                if uid in memory.measured or seconds is None:
                    continue
                memory.measured.add(uid)
                found.append(StageObservation(Stage.REPLICA, str(model), seconds))
        memory.measured &= listed
        if self._engines is not None:
            found += self._engines.take_wakes()
        return found

    def _log_outage(self, node: NodeName, seen: bool, problem: str) -> None:
        down = self._memory.down
        if seen:
            if down.pop(node, None) is not None:
                _log.info("GPU agent on node %s answers again", node)
            return
        if node not in down:
            _log.warning("GPU agent on node %s is unknown until it answers (nothing is placed "
                         "there meanwhile): %s", node, problem)  # fmt: skip
        else:
            _log.debug("GPU agent on node %s still unknown: %s", node, problem)
        down[node] = problem

    def _model_state(
        self,
        model: ModelId,
        workload: Obj | None,
        images: Mapping[PoolName, list[list[ImageReference]]],
        nodes: Sequence[NodeState],
        asleep: int,
    ) -> ModelState:
        spec = self._catalog.spec(model)
        ready = starting = 0
        if workload is not None:
            ready = int((workload.get("status") or {}).get("readyReplicas") or 0)
            wanted = int((workload.get("spec") or {}).get("replicas") or 0)
            starting = max(0, wanted - ready)
        return ModelState(
            model=model,
            ready_replicas=ready,
            starting_replicas=starting,
            tier=held_tier(model, spec.node_pool, nodes),
            image_cached=_cached_everywhere(spec.image, images.get(spec.node_pool) or []),
            asleep_replicas=min(asleep, ready),
        )


def _cached_everywhere(image: str, nodes: Sequence[list[ImageReference]]) -> bool:
    """Whether each node (its reported images) holds ``image``; False for no nodes or an image
    that is not a valid reference."""
    try:
        wanted = parse_image(image)
    except InvalidImageReference:
        return False
    return bool(nodes) and all(holds_image(reported, wanted) for reported in nodes)


def _serving_pods(cluster: _Cluster, catalog: Catalog) -> dict[ModelId, list[Obj]]:
    """Per model, its workload's pods that are bound to a node and not terminating."""
    found: dict[ModelId, list[Obj]] = {}
    for model, workload in cluster.workloads.items():
        selector = ((workload or {}).get("spec") or {}).get("selector")
        namespace = workload_for(catalog.spec(model)).namespace
        found[model] = [
            pod
            for pod in cluster.pods
            if (pod.get("spec") or {}).get("nodeName")
            and pod["metadata"].get("namespace") == namespace
            and not pod["metadata"].get("deletionTimestamp")
            and selector_matches(selector, pod["metadata"].get("labels") or {})
        ]
    return found


def _ready_condition(node: Obj) -> Obj | None:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return None


def _ready(node: Obj) -> bool:
    condition = _ready_condition(node)
    return condition is not None and condition.get("status") == "True"


def _provisioning_s(node: Obj) -> float | None:
    """Seconds from a node's creation to its Ready condition's last transition (None: unknown)."""
    condition = _ready_condition(node)
    created = rfc3339_s((node.get("metadata") or {}).get("creationTimestamp"))
    ready = rfc3339_s((condition or {}).get("lastTransitionTime"))
    if created is None or ready is None or ready < created:
        return None
    return ready - created


def _pod_gpus(pod: Obj) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        limits = (container.get("resources") or {}).get("limits") or {}
        # Extended resources must have requests == limits; either may be the one that is set.
        total += _quantity(requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE)))
    return total


def _quantity(value: Any) -> int:
    """A whole-number resource quantity ("4", 4); GPUs are never fractional."""
    if value is None:
        return 0
    try:
        return int(str(value))
    except ValueError:
        return 0
