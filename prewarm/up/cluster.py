"""A real Kubernetes control plane on 127.0.0.1: etcd + kube-apiserver (+ kwok).

Owns: generating a throwaway PKI (openssl), starting etcd and kube-apiserver on free loopback ports,
waiting for ``/readyz``, writing an admin kubeconfig, optionally running kwok (simulated nodes and
pods, no kubelet), restarting the apiserver (fault tests), creating namespaces and kwok GPU nodes,
and tearing it all down. ``prewarm up`` and the test harness (``tests/harness/k8s.py``) both start
their cluster here. Must not: download anything or look for the binaries itself (the caller passes
them: :mod:`prewarm.up.testenv`).

There is no kube-controller-manager and no kube-scheduler: Deployments are stored but create no
ReplicaSets or pods, and pods only run when created with ``spec.nodeName`` on a kwok node. What
prewarm writes (replica floors, placeholders, pre-pull pods) is stored and can be read back, which
is what prewarm controls.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from common.errors import FailedPrecondition
from prewarm.up.processes import ChildProcess, free_port

KWOK_STAGES = Path(__file__).with_name("kwok_stages.yaml")
"""kwok's stages: nodes Ready, pods bound to a kwok node Running with an IP (no kubelet)."""
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_POOL_LABEL = "prewarm.io/pool"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving cert, an admin client cert and a service-account key pair.

    EC P-256 keys: quick to generate and accepted everywhere kube-apiserver takes a key.
    """
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=prewarm-test-ca", cwd=pki)  # fmt: skip

    def issue(name: str, subject: str, extensions: str) -> None:
        (pki / f"{name}.ext").write_text(extensions, encoding="utf-8")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
                 cwd=pki)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=pki)  # fmt: skip

    issue(
        "apiserver",
        "/CN=kube-apiserver",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n",
    )
    # O=system:masters is bound to cluster-admin by the bootstrap RBAC policy.
    issue("admin", "/O=system:masters/CN=prewarm-test-admin", "extendedKeyUsage=clientAuth\n")
    _openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "sa.key", cwd=pki)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver (+ kwok). Build it with :func:`start_control_plane`."""

    workdir: Path
    apiserver_port: int
    etcd: ChildProcess
    apiserver: ChildProcess
    kwok: ChildProcess | None = None
    other_ports: list[int] = field(default_factory=list)
    """etcd's client and peer ports and kwok's: all the plane listens on besides the apiserver."""
    _clients: list[k8s_client.ApiClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    def admin_client(self) -> k8s_client.ApiClient:
        """A new ``ApiClient`` with cluster-admin rights (closed at teardown)."""
        api: k8s_client.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        self._clients.append(api)
        return api

    def token_client(self, token: str, *, host: str | None = None) -> k8s_client.ApiClient:
        """A new ``ApiClient`` that authenticates with a bearer ``token`` (a ServiceAccount's).

        ``host`` overrides the server URL (e.g. a fault-injecting proxy on ``http://``).
        """
        configuration = k8s_client.Configuration()
        configuration.host = host or self.url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        api = k8s_client.ApiClient(configuration)
        self._clients.append(api)
        return api

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Block until ``/readyz`` answers ok; fail with the apiserver's log tail otherwise."""
        pki = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            if not self.apiserver.alive():
                break
            try:
                with urllib.request.urlopen(
                    f"{self.url}/readyz", context=context, timeout=5
                ) as response:
                    if response.status == 200:
                        return
            except OSError as error:
                last_error = str(error)
            time.sleep(0.25)
        raise FailedPrecondition(
            f"kube-apiserver not ready in {timeout_s:.0f} s ({last_error}); log tail:\n"
            f"{self.apiserver.tail()}\n--- etcd:\n{self.etcd.tail(10)}"
        )

    def restart_apiserver(self, *, down_s: float = 0.0) -> None:
        """Kill kube-apiserver, stay down ``down_s``, start it again on the same port, wait ready.

        etcd keeps running, so every object survives, as in a real control-plane restart.
        """
        self.stop_apiserver()
        time.sleep(down_s)
        self.start_apiserver()

    def stop_apiserver(self) -> None:
        """Kill kube-apiserver (etcd keeps the data); see :meth:`start_apiserver`.

        SIGKILL, a crash: a graceful SIGTERM shutdown drains open watches (kwok's) for ~15 s,
        and a crash is the harsher case for clients anyway (no answer to in-flight requests).
        """
        self.apiserver.stop(kill=True)

    def start_apiserver(self) -> None:
        """Start a stopped kube-apiserver on the same port and wait until it is ready."""
        self.apiserver.start()
        self.wait_ready()

    def ports(self) -> list[int]:
        """Every loopback port the plane listens on."""
        return [self.apiserver_port, *self.other_ports]

    def children(self) -> list[ChildProcess]:
        """Its processes, in start order."""
        return [p for p in (self.etcd, self.apiserver, self.kwok) if p is not None]

    def close(self) -> None:
        """Close the clients handed out and stop kwok, kube-apiserver and etcd (in that order)."""
        for api in self._clients:
            with contextlib.suppress(Exception):
                api.close()  # type: ignore[no-untyped-call]
        for process in (self.kwok, self.apiserver, self.etcd):
            if process is not None:
                process.stop()


def _write_kubeconfig(path: Path, *, url: str, pki: Path) -> None:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": url, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(pki / "admin.crt"),
                    "client-key": str(pki / "admin.key"),
                },
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


def start_control_plane(
    workdir: Path, *, apiserver_bin: Path, etcd_bin: Path, kwok_bin: Path | None
) -> ControlPlane:
    """Start etcd, kube-apiserver and (with ``kwok_bin``) kwok under ``workdir``; ready on
    return. :class:`FailedPrecondition` (with the apiserver's log tail) when it does not start."""
    pki = workdir / "pki"
    pki.mkdir(parents=True)
    _make_pki(pki)

    etcd_client_port, etcd_peer_port, apiserver_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_client_port}"
    peer_url = f"http://127.0.0.1:{etcd_peer_port}"
    etcd = ChildProcess(
        "etcd",
        [
            str(etcd_bin),
            "--name=test",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            # A throwaway store: skipping fsync makes every write (and the suite) much faster.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        workdir / "etcd.log",
    )
    apiserver = ChildProcess(
        "kube-apiserver",
        [
            str(apiserver_bin),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The "kubernetes" Service endpoint must not be loopback; nothing here uses it.
            "--endpoint-reconciler-type=none",
            f"--secure-port={apiserver_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--authorization-mode=RBAC",
            f"--cert-dir={workdir / 'certs'}",
            # No kubelets exist: the apiserver must not try to reach one.
            "--kubelet-preferred-address-types=InternalIP",
            "--v=1",
        ],
        workdir / "kube-apiserver.log",
    )
    plane = ControlPlane(
        workdir=workdir,
        apiserver_port=apiserver_port,
        etcd=etcd,
        apiserver=apiserver,
        other_ports=[etcd_client_port, etcd_peer_port],
    )
    try:
        etcd.start()
        apiserver.start()
        _write_kubeconfig(plane.kubeconfig, url=plane.url, pki=pki)
        plane.wait_ready()
        if kwok_bin is not None:
            kwok_port = free_port()
            plane.other_ports.append(kwok_port)
            plane.kwok = ChildProcess(
                "kwok",
                [
                    str(kwok_bin),
                    f"--kubeconfig={plane.kubeconfig}",
                    f"--config={KWOK_STAGES}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                    f"--server-address=127.0.0.1:{kwok_port}",
                    "--node-lease-duration-seconds=0",
                ],
                workdir / "kwok.log",
            )
            plane.kwok.start()
    except BaseException:
        plane.close()
        raise
    return plane


def make_namespace(api: k8s_client.ApiClient, name: str) -> None:
    """Create namespace ``name`` and its ``default`` ServiceAccount, which pod admission requires
    and which only kube-controller-manager would otherwise create."""
    core = k8s_client.CoreV1Api(api)
    # The typed client accepts plain dicts (serialised as they are); its stubs want V1 models.
    core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    sa = {"metadata": {"name": "default"}}
    core.create_namespaced_service_account(name, sa)  # type: ignore[arg-type]


def make_kwok_nodes(
    api: k8s_client.ApiClient,
    *,
    pool: str,
    count: int,
    gpus: int = 8,
    pool_label: str = DEFAULT_POOL_LABEL,
    extra_labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Create ``count`` kwok-managed nodes in ``pool`` (``pool_label=pool``) with ``gpus`` each.

    Returns the node names (``<pool>-<i>``). kwok marks them Ready and runs pods bound to them.
    """
    core = k8s_client.CoreV1Api(api)
    names = []
    for index in range(count):
        name = f"{pool}-{index}"
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
        body: dict[str, Any] = {
            "metadata": {
                "name": name,
                # kwok only manages nodes that carry its annotation (see --manage-nodes-with-...).
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {
                    pool_label: pool,
                    "kubernetes.io/hostname": name,
                    "type": "kwok",
                    **(extra_labels or {}),
                },
            },
            "spec": {},
            # Node status is accepted on create (a kubelet registers this way); kwok keeps it.
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        core.create_node(body)  # type: ignore[arg-type]
        names.append(name)
    return names
