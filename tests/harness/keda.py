"""KEDA's own operator for tests, built by ``hack/testenv.d/50-keda.sh`` from KEDA's Go module.

Owns: starting ``keda-operator`` (v2.20.0, the release of the CRDs in :mod:`tests.harness.crds`) as
a process against the harness's kube-apiserver, watching one namespace; installing the KEDA CRDs it
watches; waiting until its ScaledObject controller runs; deleting what it finalizes
(ScaledObjects, TriggerAuthentications) while it runs; stopping it.

What runs, and what is turned off (flags and environment only, nothing patched):

- The operator's ScaledObject controller and its scale loop. It creates an HPA for 1..N replicas
  and itself scales the target 0 -> max(minReplicaCount, 1) when a trigger is active: scaling from
  zero needs no HPA controller, so none runs here (the harness has no kube-controller-manager).
- Leader election off; its Prometheus endpoint off (``--metrics-bind-address=0``); its health
  probes on a free loopback port (the harness polls ``/readyz``); no certificate rotation (the
  default): its Metrics Service gRPC server (what KEDA's metrics adapter would call) still starts,
  on a free loopback port with a throwaway certificate in ``--cert-dir``, because it will not start
  without one and the manager exits when it fails; ``--ca-dir`` is an empty directory instead of
  ``/custom/ca``. No admission webhooks (a separate binary) and no metrics adapter: the HPA it
  creates is stored, but nothing serves its external metric.
- ``WATCH_NAMESPACE``, ``KEDA_CLUSTER_OBJECT_NAMESPACE`` and ``POD_NAMESPACE`` name the test's
  namespace; the operator authenticates with the harness's admin kubeconfig (``KUBECONFIG``).

The operator's controllers also watch ScaledJobs, ClusterTriggerAuthentications and the eventing
CloudEventSources; a watched kind with no CRD stops the manager at its cache-sync timeout, so
:func:`keda_crds` installs all six of KEDA's CRDs (50-keda.sh copies the three that
``40-crds.sh`` does not fetch).

Must not: download anything, skip when the binary is missing (the test FAILS, naming
``hack/testenv.sh``), or leave a CRD, a finalized object or a process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from actuator.kube import SCALED_OBJECTS, KubeClient, Resource
from tests.harness.crds import (
    KEDA_CLUSTER_TRIGGER_AUTHENTICATIONS,
    KEDA_SCALED_OBJECTS,
    KEDA_TRIGGER_AUTHENTICATIONS,
    real_crds,
)
from tests.harness.k8s import ControlPlane, free_port, testenv_value, wait_for
from tests.harness.kube import install_crd

VARIABLE = "PREWARM_KEDA_OPERATOR_BIN"
KEDA_VERSION = "2.20.0"
START_TIMEOUT_S = 60.0

TRIGGER_AUTHENTICATIONS = Resource("keda.sh/v1alpha1", "triggerauthentications")

# CRDs the operator watches that tests/harness/crds.py does not carry; 50-keda.sh copies them from
# the same module release into crds/ next to the binary.
OPERATOR_ONLY_CRDS = (
    "keda.sh_scaledjobs.yaml",
    "eventing.keda.sh_cloudeventsources.yaml",
    "eventing.keda.sh_clustercloudeventsources.yaml",
)
# Logged (JSON) by controller-runtime once the ScaledObject controller's caches synced.
_WORKERS_STARTED = "Starting workers"
_SCALED_OBJECT_CONTROLLER = '"controller":"scaledobject"'


def operator_binary() -> Path:
    """The keda-operator binary; fails the test (never skips) when it is not built."""
    value = testenv_value(VARIABLE)
    if not value or not os.access(value, os.X_OK):
        pytest.fail(
            f"{VARIABLE} is not set to an executable ({value!r}): run ./hack/testenv.sh once "
            "(hack/testenv.d/50-keda.sh builds KEDA's operator into ~/.cache/prewarm-testenv)",
            pytrace=False,
        )
    return Path(value)


@contextmanager
def keda_crds(kube: KubeClient) -> Iterator[None]:
    """All six KEDA CRDs (v2.20.0) for the block: the three of :mod:`tests.harness.crds` and the
    three only the operator needs; removed after, once their kinds are no longer served."""
    extra = operator_binary().parent / "crds"
    paths: list[str] = []
    with real_crds(
        kube,
        KEDA_SCALED_OBJECTS,
        KEDA_TRIGGER_AUTHENTICATIONS,
        KEDA_CLUSTER_TRIGGER_AUTHENTICATIONS,
    ):
        try:
            for name in OPERATOR_ONLY_CRDS:
                if not (extra / name).is_file():
                    pytest.fail(f"{extra / name} is missing: run ./hack/testenv.sh again")
                paths.append(install_crd(kube, extra / name))
            yield
        finally:
            for path in paths:
                kube.delete(path, dry_run=False)
            for path in paths:
                wait_for(lambda path=path: kube.get(path) is None, what=f"{path} gone")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _metrics_service_certs(certs: Path) -> None:
    """``ca.crt``, ``tls.crt``, ``tls.key`` for the operator's Metrics Service gRPC server (the
    names KEDA's ``LoadGrpcTLSCredentials`` reads); nothing connects to it here."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=keda-test-ca", cwd=certs)  # fmt: skip
    (certs / "tls.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    _openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=keda-operator",
             cwd=certs)  # fmt: skip
    _openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "tls.ext",
             cwd=certs)  # fmt: skip


@dataclass
class RunningKeda:
    """A started operator watching ``namespace``, logging to ``log``."""

    namespace: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Everything the operator logged so far."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 60) -> str:
        """The last ``lines`` of its log (for failure messages)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (the operator stops its manager), SIGKILL after ``timeout_s``."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout_s)


def _wait_started(keda: RunningKeda, probe_port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    ready = False
    while time.monotonic() < deadline:
        if not keda.alive():
            pytest.fail(f"keda-operator exited at start; log tail:\n{keda.tail()}")
        if not ready:
            try:
                url = f"http://127.0.0.1:{probe_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    ready = response.status == 200
            except OSError:
                pass
        if ready and any(
            _WORKERS_STARTED in line and _SCALED_OBJECT_CONTROLLER in line
            for line in keda.log_text().splitlines()
        ):
            return
        time.sleep(0.2)
    pytest.fail(
        f"keda-operator did not start its ScaledObject controller in {START_TIMEOUT_S:.0f} s; "
        f"log tail:\n{keda.tail()}"
    )


def _delete_finalized(kube: KubeClient, namespace: str) -> None:
    """Delete every ScaledObject, then every TriggerAuthentication, of ``namespace`` and wait until
    the operator released them (it deletes a ScaledObject's HPA and removes its finalizer from
    both): an object left with a finalizer would keep its CRD from ever being deleted."""
    for resource in (SCALED_OBJECTS, TRIGGER_AUTHENTICATIONS):
        collection = resource.path(namespace)
        for item in kube.list(collection):
            kube.delete(resource.path(namespace, item["metadata"]["name"]), dry_run=False)
        wait_for(
            lambda collection=collection: not kube.list(collection),
            timeout_s=30,
            what=f"{resource.plural} finalized by keda-operator",
        )


@contextmanager
def run_keda_operator(
    plane: ControlPlane, kube: KubeClient, *, namespace: str
) -> Iterator[RunningKeda]:
    """KEDA's CRDs installed, then its operator watching ``namespace`` of ``plane``; ready (its
    ScaledObject controller started) on entry. On exit every ScaledObject of ``namespace`` is
    deleted while the operator still runs, then it is stopped and the CRDs removed."""
    binary = operator_binary()
    with ExitStack() as stack:
        stack.enter_context(keda_crds(kube))
        workdir = Path(tempfile.mkdtemp(prefix="prewarm-keda-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        certs, ca_dir = workdir / "certs", workdir / "ca"
        certs.mkdir()
        ca_dir.mkdir()
        _metrics_service_certs(certs)
        probe_port = free_port()
        argv = [
            str(binary),
            "--leader-elect=false",
            "--enable-cert-rotation=false",
            "--enable-prometheus-metrics=false",
            "--metrics-bind-address=0",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-service-bind-address=127.0.0.1:{free_port()}",
            f"--cert-dir={certs}",
            f"--ca-dir={ca_dir}",
            "--zap-log-level=info",
            "--zap-encoder=json",
        ]
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "KUBECONFIG": str(plane.kubeconfig),
            "WATCH_NAMESPACE": namespace,
            "KEDA_CLUSTER_OBJECT_NAMESPACE": namespace,
            "POD_NAMESPACE": namespace,
            "OPERATOR_NAME": "keda-operator",
        }
        log = workdir / "keda-operator.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        keda = RunningKeda(namespace, popen, log)
        stack.callback(keda.stop)
        _wait_started(keda, probe_port)
        stack.callback(_delete_finalized, kube, namespace)
        yield keda
