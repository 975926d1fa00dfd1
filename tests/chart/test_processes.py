"""The rendered workloads run: ``prewarm run`` and ``prewarm agent`` started as processes exactly as
the chart's containers describe them (command, environment, the settings file from the chart's
ConfigMap) and, for the daemon, with the chart's ServiceAccount and RBAC against the real API
server. Each probe the chart declares is then made as the kubelet would make it (HTTP GET, gRPC
health Check with the empty service name) and must succeed; SIGTERM ends each process cleanly.

Only what cannot exist here is changed: ports are free ones (so parallel tests do not collide),
host paths are temporary directories, the pod IP is 127.0.0.1, Prometheus is the harness's real one
with a little history, and the kubeconfig is written from the ServiceAccount's token.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actuator.kube import KubeClient
from common.ids import ModelId
from forecaster.types import SeriesBatch
from prewarm.daemon.leader import LEASES
from protos import control_pb2, control_pb2_grpc
from tests.chart.conftest import container, find, pod_environment
from tests.harness.helm import Obj, render
from tests.harness.k8s import ControlPlane, free_port
from tests.harness.kube import FAST_RETRY
from tests.harness.prometheus import prometheus_with_history
from tests.harness.rbac import RBAC_KINDS, apply_as_helm, delete_cluster_rbac, service_account_token
from tests.harness.rpc import bearer, refused

pytestmark = [pytest.mark.helm, pytest.mark.slow]

PREWARM = [sys.executable, "-m", "prewarm"]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), ""


def grpc_health(port: int) -> int:
    """What the kubelet's gRPC probe asks: Health/Check with service "" on the pod's port."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return int(response.status)


def probe(spec: Obj, port_of: dict[str, int]) -> bool:
    """Make one probe of the rendered container spec; True when the kubelet would count success."""
    try:
        if "httpGet" in spec:
            port = spec["httpGet"]["port"]
            port = port_of[port] if isinstance(port, str) else port
            return 200 <= http_get(f"http://127.0.0.1:{port}{spec['httpGet']['path']}")[0] < 400
        if "grpc" in spec:
            status = grpc_health(spec["grpc"]["port"])
            return bool(status == health_pb2.HealthCheckResponse.SERVING)
        if "tcpSocket" in spec:
            port = spec["tcpSocket"]["port"]
            port = port_of[port] if isinstance(port, str) else port
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return True
    except (OSError, grpc.RpcError):
        return False
    raise AssertionError(f"unexpected probe {spec}")


def mount_volumes(workload: Obj, spec: Obj, docs: list[Obj], root: Path) -> dict[str, str]:
    """Write the rendered ConfigMap and Secret volumes of ``spec`` under ``root`` as the kubelet
    would mount them; the mapping from each mount path to its local directory."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    mounted: dict[str, str] = {}
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            source = volume["configMap"]
            data = dict(find(docs, "ConfigMap", source["name"])["data"])
        elif "secret" in volume:
            source = volume["secret"]
            secret = find(docs, "Secret", source["secretName"])
            data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        else:
            continue  # emptyDir and hostPath: the test provides directories itself
        local = root / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True)
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            (local / item["path"]).write_text(data[item["key"]], encoding="utf-8")
        mounted[mount["mountPath"]] = str(local)
    return mounted


def relocate(text: str, mounted: dict[str, str]) -> str:
    """``text`` with every mounted path replaced by its local directory (one pass, whole paths)."""
    if not mounted:
        return text
    alternatives = "|".join(re.escape(p) for p in sorted(mounted, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w/.-])({alternatives})(?=/|\s|$)", re.MULTILINE)
    return pattern.sub(lambda m: mounted[m[1]], text)


@contextmanager
def started(
    workload: Obj, name: str, docs: list[Obj], tmp_path: Path, extra_env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """The container ``name`` of ``workload`` as a local process; killed at the end of the block
    if the test did not stop it."""
    spec = container(workload, name)
    env = pod_environment(spec, pod_ip="127.0.0.1")
    mounted = mount_volumes(workload, spec, docs, tmp_path / "mounts")
    settings = Path(relocate(env["PREWARM_CONFIG"], mounted))
    settings.write_text(relocate(settings.read_text(encoding="utf-8"), mounted), encoding="utf-8")
    env["PREWARM_CONFIG"] = str(settings)
    env["HOME"] = str(tmp_path)
    assert spec["command"] == ["prewarm"]
    process = subprocess.Popen(
        [*PREWARM, *spec["args"]],
        env={"PATH": os.environ["PATH"], **env, **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_probes(process: subprocess.Popen[str], spec: Obj, port_of: dict[str, int]) -> None:
    """Make every probe of :data:`PROBES` until all succeed at once (90 s at most)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        if all(probe(spec[kind], port_of) for kind in PROBES):
            return
        time.sleep(0.3)
    raise AssertionError(f"probes {PROBES} did not succeed in 90 s")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    return output


@pytest.fixture
def sa_kubeconfig(
    k8s_control_plane: ControlPlane, k8s_api: object, k8s_namespace: str, tmp_path: Path
) -> Iterator[tuple[Path, list[Obj]]]:
    """The chart rendered for this namespace, its ServiceAccount and RBAC applied, and a kubeconfig
    holding that ServiceAccount's token."""
    admin = KubeClient(k8s_control_plane.admin_client(), FAST_RETRY)
    release = f"p{k8s_namespace}"
    docs = render(release=release, namespace=k8s_namespace)
    applied = [d for d in docs if d["kind"] in {"ServiceAccount", *RBAC_KINDS}]
    apply_as_helm(admin, applied)
    account = find(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    token = service_account_token(admin, k8s_namespace, account)
    kubeconfig = tmp_path / "sa.kubeconfig"
    cluster = {
        "server": k8s_control_plane.url,
        "certificate-authority": str(k8s_control_plane.ca_file),
    }
    context = {"cluster": "test", "user": "sa", "namespace": k8s_namespace}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "sa",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": context}],
    }
    kubeconfig.write_text(yaml.safe_dump(document), encoding="utf-8")
    yield kubeconfig, docs
    delete_cluster_rbac(admin, applied)


@pytest.mark.k8s
@pytest.mark.prometheus
def test_daemon_runs_with_the_charts_config_rbac_and_probes(
    sa_kubeconfig: tuple[Path, list[Obj]],
    k8s_control_plane: ControlPlane,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    kubeconfig, _ = sa_kubeconfig
    now = time.time()
    start_s = (now // 60) * 60 - 3 * 3600
    counts = (20 + 10 * np.sin(np.arange(3 * 60) / 30)).round()[None, :]
    batch = SeriesBatch(models=(ModelId("chat"),), start_s=start_s, step_s=60.0, counts=counts)
    with prometheus_with_history(batch, tmp_path / "prom") as prometheus:
        release = f"p{k8s_namespace}"
        http, grpc_port = free_port(), free_port()
        docs = render(release=release, namespace=k8s_namespace, sets=[
            f"daemon.ports.http={http}", f"daemon.ports.grpc={grpc_port}",
            f"config.forecaster.prometheus.url={prometheus.url}",
            "config.forecaster.history_window_s=10800",
            "config.daemon.tick_s=1",
        ])  # fmt: skip
        deployment = find(docs, "Deployment")
        spec = container(deployment, "daemon")
        extra_env = {"KUBECONFIG": str(kubeconfig)}
        with started(deployment, "daemon", docs, tmp_path, extra_env) as process:
            ports = {"http": http, "grpc": grpc_port}
            wait_for_probes(process, spec, ports)
            status, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
            assert status == 200
            assert "prewarm_is_leader 1.0" in metrics  # it took the Lease with the chart's RBAC
            lease = KubeClient(k8s_control_plane.admin_client(), FAST_RETRY).get(
                LEASES.path(k8s_namespace, "prewarm-leader")
            )
            assert lease is not None
            assert lease["spec"]["holderIdentity"].startswith("pod-0_")  # POD_NAME from the chart
            # The control API takes the chart's generated token (and refuses a call without one).
            secret = find(docs, "Secret", f"{release}-prewarm-control-tokens")
            token = base64.b64decode(secret["data"]["read"]).decode()
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = control_pb2_grpc.ControlStub(channel)
                request = control_pb2.ListRequestsRequest()
                stub.ListRequests(request, metadata=bearer(token), timeout=10)
                refusal = refused(stub.ListRequests, request, timeout=10)
                assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
            output = stop(process)
    assert "forbidden" not in output.lower()


def test_agent_runs_with_the_charts_config_and_probes(tmp_path: Path) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    docs = render(sets=[
        f"agent.port={grpc_port}", f"agent.metricsPort={metrics_port}",
        f"agent.diskCache.path={tmp_path / 'cache'}",
        f"agent.sharedMemory.path={tmp_path / 'shm'}",
        f"agent.compileCache.path={tmp_path / 'compile'}",
    ])  # fmt: skip
    for directory in ("cache", "shm", "compile"):
        (tmp_path / directory).mkdir()  # the kubelet's DirectoryOrCreate
    daemonset = find(docs, "DaemonSet")
    spec = container(daemonset, "agent")
    with started(daemonset, "agent", docs, tmp_path, {}) as process:
        ports = {"grpc": grpc_port, "metrics": metrics_port}
        wait_for_probes(process, spec, ports)
        status, metrics = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert "prewarm_agent_headroom_bytes" in metrics
        stop(process)


def _is_leader(http: int) -> bool | None:
    """What a daemon's /metrics says about leadership (None: it did not answer)."""
    try:
        status, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    return "prewarm_is_leader 1.0" in metrics


@pytest.mark.chaos
@pytest.mark.k8s
@pytest.mark.prometheus
def test_sigkill_of_the_leading_daemon_process_hands_the_lease_to_the_standby(
    sa_kubeconfig: tuple[Path, list[Obj]],
    k8s_control_plane: ControlPlane,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    """Two ``prewarm run`` processes as the chart runs them (two replicas, one Lease): exactly
    one leads; after a SIGKILL of its process (nothing released) the other leads within the lease
    duration plus one retry period, and the Lease names it."""
    lease_s, retry_s = 4, 1.0
    kubeconfig, _ = sa_kubeconfig
    now = time.time()
    start_s = (now // 60) * 60 - 3 * 3600
    counts = (20 + 10 * np.sin(np.arange(3 * 60) / 30)).round()[None, :]
    batch = SeriesBatch(models=(ModelId("chat"),), start_s=start_s, step_s=60.0, counts=counts)
    admin = KubeClient(k8s_control_plane.admin_client(), FAST_RETRY)
    with prometheus_with_history(batch, tmp_path / "prom") as prometheus, ExitStack() as stack:
        daemons: dict[str, tuple[subprocess.Popen[str], int]] = {}
        for pod in ("pod-0", "pod-1"):
            http, grpc_port = free_port(), free_port()
            docs = render(release=f"p{k8s_namespace}", namespace=k8s_namespace, sets=[
                f"daemon.ports.http={http}", f"daemon.ports.grpc={grpc_port}",
                f"config.forecaster.prometheus.url={prometheus.url}",
                "config.forecaster.history_window_s=10800",
                "config.daemon.tick_s=1",
                f"config.daemon.leader_election.lease_duration_s={lease_s}",
                f"config.daemon.leader_election.retry_period_s={retry_s:g}",
            ])  # fmt: skip
            deployment = find(docs, "Deployment")
            env = {"KUBECONFIG": str(kubeconfig), "POD_NAME": pod}
            (tmp_path / pod).mkdir()
            process = stack.enter_context(started(deployment, "daemon", docs, tmp_path / pod, env))
            ports = {"http": http, "grpc": grpc_port}
            wait_for_probes(process, container(deployment, "daemon"), ports)
            daemons[pod] = (process, http)

        # Exactly one leads, sampled for a few retry periods.
        leaders: set[str] = set()
        deadline = time.monotonic() + 4 * retry_s
        while time.monotonic() < deadline or not leaders:
            views = {pod: _is_leader(http) for pod, (_, http) in daemons.items()}
            assert sum(bool(v) for v in views.values()) <= 1, views
            leaders |= {pod for pod, leading in views.items() if leading}
            assert time.monotonic() < deadline + 30, "no daemon took the Lease in 30 s"
            time.sleep(0.2)
        assert len(leaders) == 1, leaders
        leader = leaders.pop()
        standby = next(pod for pod in daemons if pod != leader)

        killed_at = time.monotonic()
        daemons[leader][0].kill()  # SIGKILL: the Lease is not released
        daemons[leader][0].wait()
        while not _is_leader(daemons[standby][1]):
            assert time.monotonic() - killed_at < 60, "the standby never took the Lease"
            time.sleep(0.1)
        failover_s = time.monotonic() - killed_at
        lease = admin.get(LEASES.path(k8s_namespace, "prewarm-leader"))
        assert lease is not None
        assert lease["spec"]["holderIdentity"].startswith(f"{standby}_"), lease["spec"]
        print(f"\nprocess failover: {leader} SIGKILLed, {standby} leads after {failover_s:.1f} s")
        # Its last renewal came at most one retry period before the kill.
        assert failover_s <= lease_s + retry_s + 1.0, failover_s
        stop(daemons[standby][0])
