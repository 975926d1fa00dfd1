"""The cluster observer against a real kube-apiserver with kwok nodes and real GPU agents.

One agent per node on 127.0.0.1 (an in-process agent server and a real ``prewarm agent`` process),
each found through its agent pod's ``prewarm.io/agent-address`` annotation. The misbehaving
"agents" of the bad-input test are plain gRPC servers built here, named as such: a server that
answers bytes that are no StatusResponse, one that never answers, one that reports a tier no
contract declares.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from kubernetes import client as k8s_client
from pydantic import SecretStr

from actuator.agents import AGENT_ADDRESS_ANNOTATION, PodAddressResolver, agent_address
from actuator.capacity import COMPONENT as PLACEHOLDER_COMPONENT
from actuator.config import ActuatorConfig, AgentClientConfig
from actuator.kube import NODES, PODS, KubeClient, Obj
from actuator.observer import KubeClusterObserver, selector_matches
from common.errors import InvalidInput, NotFound
from common.ids import ModelId, NodeName, PoolName
from common.tiers import Tier
from gpu_agent.config import AuthConfig
from planner.actions import WorkloadRef
from planner.catalog import Catalog, ModelSpec
from planner.leadtime import Stage
from planner.observed import ClusterSnapshot
from planner.planner import NodeState
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.gpu_agent.fakes import FakeNvml
from tests.harness.agent import source, write_model
from tests.harness.k8s import GPU_RESOURCE, make_kwok_nodes, make_namespace, wait_for
from tests.harness.kube import FAST_RETRY
from tests.harness.node_agents import (
    agent_process,
    agent_server,
    apply_agent_pod,
    node_agent_config,
)
from tests.harness.workloads import apply_pod, deployment, pod_body

NOW = 1_800_000_000.0
GIB = 1024**3
MODEL = ModelId("m")


def observer_config(namespace: str, **agent: object) -> ActuatorConfig:
    return ActuatorConfig(
        namespace=namespace,
        retry=FAST_RETRY,
        agent=AgentClientConfig.model_validate({"status_timeout_s": 1.0, **agent}),
    )


def catalog_for(pool: str, namespace: str) -> Catalog:
    spec = ModelSpec(
        model=MODEL,
        weights_gb=0.001,
        image="vllm/vllm-openai:v0.9",
        image_gb=10.0,
        replica_rps=1.0,
        compile_s=0.0,
        node_pool=PoolName(pool),
        workload=WorkloadRef(namespace, str(MODEL)),
    )
    return Catalog({MODEL: spec})


def by_node(snapshot: ClusterSnapshot, pool: str) -> dict[str, NodeState]:
    """The nodes of ``pool`` (the session's apiserver also holds other tests' nodes)."""
    return {str(node.name): node for node in snapshot.nodes if node.pool == pool}


def stages(snapshot: ClusterSnapshot, pool: str) -> list[tuple[Stage, float, float]]:
    return [(o.stage, o.seconds, o.gb) for o in snapshot.stage_observations if o.key == pool]


def placeholder_pod(namespace: str, node: str, *, gpus: int) -> Obj:
    body = pod_body(
        f"placeholder-{node}",
        namespace=namespace,
        image="registry.k8s.io/pause:3.10",
        node=node,
        labels={"app.kubernetes.io/component": PLACEHOLDER_COMPONENT},
    )
    body["spec"]["containers"][0]["resources"] = {
        "requests": {GPU_RESOURCE: str(gpus)},
        "limits": {GPU_RESOURCE: str(gpus)},
    }
    return body


def add_provisioned_node(kube: KubeClient, *, pool: str, name: str, ready_after_s: int) -> None:
    """A node not managed by kwok whose Ready condition turned True ``ready_after_s`` after its
    creation, as a kubelet that took that long to come up would report."""
    created = kube.create(
        NODES.path(),
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": name, "labels": {"prewarm.io/pool": pool}}},
        dry_run=False,
    )  # fmt: skip
    stamp = datetime.fromisoformat(created["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    ready = (stamp + timedelta(seconds=ready_after_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastTransitionTime": ready, "lastHeartbeatTime": ready}  # fmt: skip
    kube.merge_patch(
        NODES.path(None, name, sub="status"),
        {"status": {"conditions": [condition]}},
        field_manager="kubelet",
        dry_run=False,
    )


async def timed(call: Awaitable[ClusterSnapshot]) -> tuple[ClusterSnapshot, float]:
    started = time.monotonic()
    snapshot = await call
    return snapshot, time.monotonic() - started


def agent_warnings(caplog: pytest.LogCaptureFixture, node: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "actuator.observer" and node in r.getMessage()
    ]


@pytest.mark.k8s
@pytest.mark.slow
async def test_real_agents_on_kwok_nodes(
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    kube: KubeClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="actuator.observer")
    namespace = k8s_namespace
    pool = f"obs-{namespace}"
    first, second = make_kwok_nodes(k8s_api, pool=pool, count=2, gpus=2)
    sources = tmp_path / "models"
    weights = sources / "m.safetensors"
    write_model(weights, numel=200_000)
    config = observer_config(namespace)
    catalog = catalog_for(pool, namespace)
    # The model's serving workload, one of its pods on the first node, and a pod with the same
    # labels in another namespace (not the workload's: it does not count).
    deployment(kube, namespace, str(MODEL), replicas=2)
    apply_pod(kube, pod_body("m-1", namespace=namespace, image="vllm/vllm-openai:v0.9",
                             node=first, labels={"app": str(MODEL)}))  # fmt: skip
    make_namespace(k8s_api, f"{namespace}-other")
    apply_pod(kube, pod_body("m-1", namespace=f"{namespace}-other", image="x:1",
                             node=second, labels={"app": str(MODEL)}))  # fmt: skip
    apply_pod(kube, placeholder_pod(namespace, second, gpus=1))

    first_config = node_agent_config(tmp_path / "a0", sources=sources)
    second_config = node_agent_config(tmp_path / "a1", sources=sources)
    # The in-process agent reports one GPU through a fake NVML (this machine has none).
    async with agent_server(first_config, node=first, nvml=FakeNvml(16 * GIB)) as in_process:
        with agent_process(second_config, tmp_path / "p1") as process:
            apply_agent_pod(kube, namespace=namespace, node=first,
                            address=f"127.0.0.1:{in_process.port}")  # fmt: skip
            apply_agent_pod(kube, namespace=namespace, node=second,
                            address=f"127.0.0.1:{process.port}")  # fmt: skip
            async with grpc.aio.insecure_channel(f"127.0.0.1:{process.port}") as channel:
                request = pb.PreloadRequest(
                    model_id=str(MODEL), weights=[source(weights)], target_tier=pb.TIER_HOST
                )
                done = [p async for p in pb_grpc.GpuAgentStub(channel).Preload(request)]
            assert done[-1].stage == pb.PreloadProgress.STAGE_DONE

            observer = KubeClusterObserver(kube, config=config, catalog=catalog)
            snapshot, took_s = await timed(observer.observe(now_s=NOW, models=[MODEL]))
            nodes = by_node(snapshot, pool)

            assert set(nodes) == {first, second}
            assert nodes[first].agent_seen
            assert nodes[second].agent_seen
            assert nodes[first].holdings == {}
            assert nodes[second].holdings == {MODEL: Tier.HOST}
            assert nodes[first].free_gpu_bytes == 16 * GIB - first_config.headroom_bytes
            assert nodes[second].free_gpu_bytes == 0  # the agent process sees no GPU
            free_host = nodes[second].free_host_bytes
            assert free_host is not None
            assert free_host > 0
            assert nodes[first].running == {MODEL}
            assert nodes[second].running == frozenset()
            assert (nodes[first].placeholder_gpus, nodes[second].placeholder_gpus) == (0, 1)
            assert snapshot.placeholder_gpus == {PoolName(pool): 1}
            assert snapshot.models[MODEL].tier == Tier.HOST
            assert snapshot.models[MODEL].current_replicas == 2  # no controller: 0 ready + 2
            # No nvidia.com/gpu.memory label: the GPU size comes from the agent.
            assert snapshot.pools[PoolName(pool)].gpu_memory_bytes == 16 * GIB
            ((stage, seconds, gb),) = stages(snapshot, pool)
            assert stage == Stage.WEIGHTS_REMOTE  # fetched from its source into host memory
            assert 0 < seconds < 60
            assert gb == pytest.approx(weights.stat().st_size / 1e9)

            # Reported once: the next observation has no stage observation at all.
            again = await observer.observe(now_s=NOW + 30, models=[MODEL])
            assert stages(again, pool) == []

            # A node that appears later: its provisioning (created -> Ready) is measured once.
            late = f"{pool}-late"
            add_provisioned_node(kube, pool=pool, name=late, ready_after_s=95)
            with_late = await observer.observe(now_s=NOW + 60, models=[MODEL])
            assert stages(with_late, pool) == [(Stage.NODE, 95.0, 0.0)]
            assert not by_node(with_late, pool)[late].agent_seen  # it has no agent pod
            assert stages(await observer.observe(now_s=NOW + 90, models=[MODEL]), pool) == []
            assert len(agent_warnings(caplog, late)) == 1  # once per outage, not every tick

            # The in-process agent stops: its node is unknown, the other still observed.
            await in_process.stop()
            down, down_s = await timed(observer.observe(now_s=NOW + 120, models=[MODEL]))
            nodes = by_node(down, pool)
            assert not nodes[first].agent_seen
            assert nodes[first].holdings == {}
            assert nodes[first].free_gpu_bytes == 0
            assert nodes[first].running == {MODEL}  # what Kubernetes says stays known
            assert nodes[second].agent_seen
            assert nodes[second].holdings == {MODEL: Tier.HOST}
            assert down.models[MODEL].tier == Tier.HOST
            assert down_s < config.agent.status_timeout_s + 1.0
            await observer.observe(now_s=NOW + 150, models=[MODEL])
            assert len(agent_warnings(caplog, first)) == 1
            print(f"\nobservation: {took_s:.3f} s with 2 agents; {down_s:.3f} s with one down")

            # It comes back on another port (its pod's annotation says so): observed again.
            async with agent_server(first_config, node=first, nvml=FakeNvml(16 * GIB)) as back:
                apply_agent_pod(kube, namespace=namespace, node=first,
                                address=f"127.0.0.1:{back.port}")  # fmt: skip
                again = await observer.observe(now_s=NOW + 180, models=[MODEL])
                assert by_node(again, pool)[first].agent_seen
                assert any("answers again" in r.getMessage() for r in caplog.records)
            await observer.close()


async def garbage_status(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"\xff\xff\xff\xff not a StatusResponse"


async def never_answers(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(60)
    return b""


async def unknown_tier(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    holding = pb.ModelHolding(model_id="m", tier=9)  # type: ignore[arg-type]
    return pb.StatusResponse(node="x", models=[holding]).SerializeToString()


Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


@pytest.fixture
async def not_an_agent() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Starts gRPC servers (not agents) whose GpuAgent.Status is the given raw-bytes handler."""
    servers: list[grpc.aio.Server] = []

    async def start(handler: Handler) -> int:
        server = grpc.aio.server()
        method = grpc.unary_unary_rpc_method_handler(handler)
        generic = grpc.method_handlers_generic_handler(
            "prewarm.gpu_agent.v1.GpuAgent", {"Status": method}
        )
        server.add_generic_rpc_handlers((generic,))
        port = int(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(0)


@pytest.mark.k8s
async def test_bad_agents_and_bad_annotations_mark_their_node_unknown(
    k8s_api: k8s_client.ApiClient,
    k8s_namespace: str,
    kube: KubeClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    not_an_agent: Callable[[Handler], Awaitable[int]],
) -> None:
    caplog.set_level(logging.WARNING, logger="actuator.observer")
    namespace = k8s_namespace
    pool = f"bad-{namespace}"
    names = make_kwok_nodes(k8s_api, pool=pool, count=6, gpus=1)
    good, garbage, hanging, refused, malformed, odd_tier = names
    sources = tmp_path / "models"
    sources.mkdir()
    config = observer_config(namespace, token="not-the-agents-token")
    token_config = node_agent_config(
        tmp_path / "auth", sources=sources,
        auth=AuthConfig(mode="token", token=SecretStr("the-agents-token")),
    )  # fmt: skip
    async with (
        agent_server(node_agent_config(tmp_path / "good", sources=sources), node=good) as ok,
        agent_server(token_config, node=refused) as locked,
    ):
        addresses = {
            good: f"127.0.0.1:{ok.port}",
            garbage: f"127.0.0.1:{await not_an_agent(garbage_status)}",
            hanging: f"127.0.0.1:{await not_an_agent(never_answers)}",
            refused: f"127.0.0.1:{locked.port}",
            malformed: "127.0.0.1:not-a-port",
            odd_tier: f"127.0.0.1:{await not_an_agent(unknown_tier)}",
        }
        for node, address in addresses.items():
            apply_agent_pod(kube, namespace=namespace, node=node, address=address)
        observer = KubeClusterObserver(kube, config=config, catalog=catalog_for(pool, namespace))

        snapshot, took_s = await timed(observer.observe(now_s=NOW, models=[MODEL]))
        await observer.observe(now_s=NOW + 30, models=[MODEL])
        await observer.close()

    nodes = by_node(snapshot, pool)
    assert [n for n in names if nodes[n].agent_seen] == [good]
    assert all(nodes[n].holdings == {} for n in names)
    assert took_s < config.agent.status_timeout_s + 1.0  # the hanging one did not hold it up
    print(f"\nobservation with 6 agents, 5 of them bad (one hangs): {took_s:.3f} s")
    causes = {
        garbage: "not a StatusResponse",
        hanging: "DEADLINE_EXCEEDED",
        refused: "UNAUTHENTICATED",
        malformed: AGENT_ADDRESS_ANNOTATION,
        odd_tier: "unknown tier 9",
    }
    for node, cause in causes.items():
        logged = agent_warnings(caplog, node)
        assert len(logged) == 1, (node, logged)  # two observations, one warning
        assert cause in logged[0], logged[0]


def test_agent_address_reads_the_pod() -> None:
    def pod(annotations: dict[str, str] | None = None, ports: list[Obj] | None = None) -> Obj:
        return {
            "metadata": {"namespace": "prewarm", "name": "agent-x", "annotations": annotations},
            "spec": {"containers": [{"name": "agent", "ports": ports or []}]},
            "status": {"phase": "Running", "podIP": "10.1.2.3"},
        }

    grpc_port = [{"name": "metrics", "containerPort": 9400}, {"name": "grpc", "containerPort": 7}]
    assert agent_address(pod(), default_port=50061) == "10.1.2.3:50061"
    assert agent_address(pod(ports=grpc_port), default_port=50061) == "10.1.2.3:7"
    annotated = pod({AGENT_ADDRESS_ANNOTATION: "127.0.0.1:40001"}, grpc_port)
    assert agent_address(annotated, default_port=50061) == "127.0.0.1:40001"
    ipv6 = pod({AGENT_ADDRESS_ANNOTATION: "[fd00::5]:50061"})
    assert agent_address(ipv6, default_port=1) == "[fd00::5]:50061"
    v6_ip = pod()
    v6_ip["status"]["podIP"] = "fd00::7"
    assert agent_address(v6_ip, default_port=50061) == "[fd00::7]:50061"
    for bad in ("127.0.0.1", "127.0.0.1:", ":50061", "host:0", "host:70000", "a b:1", "x:y"):
        with pytest.raises(InvalidInput, match=re.escape(AGENT_ADDRESS_ANNOTATION)):
            agent_address(pod({AGENT_ADDRESS_ANNOTATION: bad}), default_port=50061)
    no_ip = pod()
    del no_ip["status"]["podIP"]
    with pytest.raises(NotFound, match="no pod IP"):
        agent_address(no_ip, default_port=50061)


@pytest.mark.k8s
async def test_pod_address_resolver_uses_the_annotation(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str, kube: KubeClient
) -> None:
    annotated, malformed = make_kwok_nodes(k8s_api, pool=f"res-{k8s_namespace}", count=2)
    apply_agent_pod(kube, namespace=k8s_namespace, node=annotated, address="127.0.0.1:40001")
    apply_agent_pod(kube, namespace=k8s_namespace, node=malformed, address="nowhere")
    resolver = PodAddressResolver(kube, observer_config(k8s_namespace))

    assert await resolver(NodeName(annotated)) == "127.0.0.1:40001"
    with pytest.raises(InvalidInput, match="is not host:port"):
        await resolver(NodeName(malformed))
    assert kube.get(PODS.path(k8s_namespace, f"agent-{malformed}")) is not None  # nothing lost


def test_selector_matches_label_selectors() -> None:
    labels = {"app": "m", "tier": "gpu"}
    assert selector_matches({"matchLabels": {"app": "m"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "n"}}, labels)
    assert selector_matches({"app": "m"}, labels)  # a plain map, as a ReplicationController's
    expressions = [
        {"key": "tier", "operator": "In", "values": ["gpu", "cpu"]},
        {"key": "canary", "operator": "DoesNotExist"},
        {"key": "app", "operator": "Exists"},
        {"key": "zone", "operator": "NotIn", "values": ["a"]},
    ]
    assert selector_matches({"matchExpressions": expressions}, labels)
    assert not selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gpu"]}]}, labels
    )
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "Gt"}]}, labels)
    # An empty selector would be "every pod of the namespace": it selects nothing here.
    assert not selector_matches({}, labels)
    assert not selector_matches({"matchLabels": {}}, labels)
    assert not selector_matches(None, labels)


@pytest.mark.k8s
async def test_image_pulls_and_replica_starts_are_measured_once(
    k8s_api: k8s_client.ApiClient, k8s_namespace: str, kube: KubeClient
) -> None:
    namespace = k8s_namespace
    pool = f"starts-{namespace}"
    (node,) = make_kwok_nodes(k8s_api, pool=pool, count=1, gpus=1)
    catalog = catalog_for(pool, namespace)
    deployment(kube, namespace, str(MODEL), replicas=1)
    path = apply_pod(kube, pod_body("m-1", namespace=namespace, image="vllm/vllm-openai:v0.9",
                                   node=node, labels={"app": str(MODEL)}))  # fmt: skip
    # kwok runs the pod first (its own timestamps); then, as a kubelet would have reported it, the
    # serving pod's containers started at 10:00:00 and it turned Ready 95 s later.
    wait_for(
        lambda: ((kube.get(path) or {}).get("status") or {}).get("phase") == "Running",
        what="kwok runs the serving pod",
    )
    kube.merge_patch(
        PODS.path(namespace, "m-1", sub="status"),
        {"status": {
            "conditions": [{"type": "Ready", "status": "True",
                            "lastTransitionTime": "2026-12-03T10:01:35Z"}],
            "containerStatuses": [{
                "name": "c", "image": "vllm/vllm-openai:v0.9", "imageID": "", "ready": True,
                "restartCount": 0, "state": {"running": {"startedAt": "2026-12-03T10:00:00Z"}},
            }],
        }},
        field_manager="kubelet",
        dry_run=False,
    )  # fmt: skip
    involved = {"kind": "Pod", "namespace": namespace, "name": "m-1",
                "uid": (kube.get(path) or {})["metadata"]["uid"]}  # fmt: skip
    messages = {
        # The catalog's image under the name the runtime resolves it to, 9.9 GB in 1m6s.
        "pulled": 'Successfully pulled image "docker.io/vllm/vllm-openai:v0.9" in 1m6s '
        "(1m6.2s including waiting). Image size: 9900000000 bytes.",
        "present": 'Container image "vllm/vllm-openai:v0.9" already present on machine',
        "other": 'Successfully pulled image "busybox:1.36" in 850ms',  # not a catalog image
    }
    for name, message in messages.items():
        kube.create(
            f"/api/v1/namespaces/{namespace}/events",
            {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"m-1.{name}"},
             "involvedObject": involved, "reason": "Pulled", "message": message,
             "type": "Normal", "source": {"component": "kubelet", "host": node}},
            dry_run=False,
        )  # fmt: skip
    config = observer_config(namespace)
    observer = KubeClusterObserver(kube, config=config, catalog=catalog)
    try:
        snapshot = await observer.observe(now_s=NOW, models=[MODEL])
        again = await observer.observe(now_s=NOW, models=[MODEL])
    finally:
        await observer.close()
    measured = {(o.stage, o.key): (o.seconds, o.gb) for o in snapshot.stage_observations}
    assert measured[(Stage.IMAGE, "vllm/vllm-openai:v0.9")] == (66.0, 9.9)
    assert measured[(Stage.REPLICA, str(MODEL))] == (95.0, 0.0)
    assert not any(o.key == "busybox:1.36" for o in snapshot.stage_observations)
    assert not [o for o in again.stage_observations if o.stage in (Stage.IMAGE, Stage.REPLICA)]
