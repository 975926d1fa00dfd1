"""KEDA for real: KEDA's own operator (v2.20.0, built from its Go module) drives prewarm's external
scaler on the harness's kube-apiserver, with KEDA's real CRDs.

A model's Deployment sits at 0 replicas with a ScaledObject of ``type: external`` whose
``scalerAddress`` is prewarm's control API (a real gRPC server on 127.0.0.1). prewarm forecasts a
spike two minutes ahead; KEDA's scale loop calls ``IsActive`` and scales the Deployment 0 -> 1
before the spike, and only with a credential prewarm accepts. What KEDA v2.20 can send an external
scaler (``pkg/scalers/external_scaler.go``):

- TLS client certificates from a ``TriggerAuthentication`` (``caCert``, ``tlsClientCert``,
  ``tlsClientKey``): the only TriggerAuthentication parameters an external scaler uses; KEDA
  forwards no other one (no bearer token) and sends no gRPC metadata.
- The trigger's metadata, where every key ending in ``FromEnv`` is replaced by the value of that
  environment variable of the scale target's container, resolved by KEDA (a ``secretKeyRef`` is
  read from the Secret): prewarm's ``tokenFromEnv``.

Nothing here runs an HPA controller or a metrics adapter: scaling from zero is the operator's own
step (:mod:`tests.harness.keda`), which is what prewarm's forecast must drive.
"""

from __future__ import annotations

import base64
import math
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from actuator.kube import DEPLOYMENTS, HPAS, SCALED_OBJECTS, KubeClient, Resource
from common.ids import ModelId
from forecaster.types import Forecast
from prewarm.control.config import ControlConfig
from prewarm.control.view import StaticDaemonView
from tests.control.conftest import (
    READ_TOKEN,
    RunningServer,
    control_config,
    make_forecast,
    start_server,
    stop_server,
)
from tests.harness.k8s import ControlPlane, wait_for
from tests.harness.keda import (
    KEDA_VERSION,
    TRIGGER_AUTHENTICATIONS,
    RunningKeda,
    run_keda_operator,
)
from tests.harness.kube import FAST_RETRY

pytestmark = [pytest.mark.acceptance_fleet, pytest.mark.k8s, pytest.mark.slow]

SECRETS = Resource("v1", "secrets")
SPIKING = ModelId("llama-70b")
QUIET = ModelId("mistral-7b")
STEP_S = 60.0
SPIKE_AFTER_S = 2 * STEP_S
"""The forecast predicts nothing for two steps, then a spike: KEDA must scale before it."""
SCALE_TIMEOUT_S = 60.0
SETTLE_POLLS = 4
"""Polling intervals (1 s each) a refused or idle ScaledObject is watched after it was read."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA; prewarm's server certificate for 127.0.0.1; client certificates ``keda`` (granted
    the read scope) and ``stranger`` (signed by the same CA, granted nothing)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=prewarm-test-ca", cwd=tmp_path)  # fmt: skip
    for name, usage in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("keda", "extendedKeyUsage=clientAuth\n"),
        ("stranger", "extendedKeyUsage=clientAuth\n"),
    ):
        (tmp_path / f"{name}.ext").write_text(usage, encoding="utf-8")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=tmp_path)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=tmp_path)  # fmt: skip
    return tmp_path


@pytest.fixture
def kube(k8s_api: k8s_client.ApiClient) -> KubeClient:
    """The project's client with the harness's admin credentials."""
    return KubeClient(k8s_api, FAST_RETRY)


def spiking_forecast(now_s: float) -> Forecast:
    """SPIKING's forecast: nothing until the first step boundary SPIKE_AFTER_S or more after
    ``now_s``, then 120 requests a minute (at the median)."""
    start = math.floor(now_s / STEP_S) * STEP_S
    idle = math.ceil((now_s + SPIKE_AFTER_S - start) / STEP_S)
    return make_forecast(
        SPIKING,
        start_s=start,
        step_s=STEP_S,
        counts=[0.0] * idle + [120.0, 120.0],
        p_active=[0.0] * idle + [1.0, 1.0],
    )


def idle_forecast(model: ModelId, now_s: float) -> Forecast:
    """No request predicted for six steps."""
    start = math.floor(now_s / STEP_S) * STEP_S
    return make_forecast(model, start_s=start, step_s=STEP_S, counts=[0.0] * 6, p_active=[0.0] * 6)


@contextmanager
def scaler_server(config: ControlConfig, *, spike: bool = True) -> Iterator[RunningServer]:
    """prewarm's control API with the scaler. SPIKING is forecast to spike SPIKE_AFTER_S from now
    (``spike``) or to stay idle; QUIET is forecast to stay idle."""
    now = time.time()
    view = StaticDaemonView(
        forecast_map={
            SPIKING: spiking_forecast(now) if spike else idle_forecast(SPIKING, now),
            QUIET: idle_forecast(QUIET, now),
        }
    )
    handle = start_server(config=config, view=view)
    try:
        yield handle
    finally:
        stop_server(handle)


def spike_at(server: RunningServer) -> float:
    """The wall-clock second at which the served forecast of SPIKING first predicts requests."""
    forecast = server.view.forecast_map[SPIKING]
    first = next(i for i, p in enumerate(forecast.p_active) if p > 0)
    return forecast.start_s + first * forecast.step_s


def _secret(namespace: str, name: str, data: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def _deployment(namespace: str, name: str, *, env: list[dict[str, Any]] | None = None) -> Any:
    """A model server's Deployment at 0 replicas (no controller-manager runs: it stays an object,
    which is all KEDA's scale subresource calls need)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "server", "image": "registry.invalid/vllm:test", "env": env or []}
                    ]
                },
            },
        },
    }


def _scaled_object(
    namespace: str,
    name: str,
    *,
    metadata: dict[str, str],
    authentication: str | None = None,
    trigger_type: str = "external",
    polling_interval_s: int = 1,
) -> dict[str, Any]:
    """The ScaledObject of docs/keda.md; by default it polls every second (KEDA's default: 30 s)."""
    trigger: dict[str, Any] = {
        "type": trigger_type,
        "metricType": "AverageValue",
        "metadata": metadata,
    }
    if authentication is not None:
        trigger["authenticationRef"] = {"name": authentication}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": 0,
            "maxReplicaCount": 4,
            "pollingInterval": polling_interval_s,
            "cooldownPeriod": 600,
            "triggers": [trigger],
        },
    }


def _apply(kube: KubeClient, resource: Resource, body: dict[str, Any]) -> None:
    path = resource.path(body["metadata"]["namespace"], body["metadata"]["name"])
    kube.apply(path, body, field_manager="test", dry_run=False)


def _replicas(kube: KubeClient, namespace: str, name: str) -> int:
    deployment = kube.get(DEPLOYMENTS.path(namespace, name))
    assert deployment is not None, f"Deployment {namespace}/{name} is gone"
    return int(deployment["spec"].get("replicas") or 0)


def _refusals(server: RunningServer, code: str) -> dict[str, float]:
    """How many scaler calls prewarm refused with ``code``, by method (only those > 0)."""
    counts: dict[str, float] = {}
    for family in server.server.metrics.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "prewarm_control_calls_total" and labels.get("code") == code:
                counts[labels["method"]] = counts.get(labels["method"], 0.0) + sample.value
    return {method: count for method, count in counts.items() if count > 0}


def _served(server: RunningServer, method: str) -> float:
    """How many ``method`` calls prewarm's scaler answered OK."""
    value = server.server.metrics.registry.get_sample_value(
        "prewarm_control_calls_total", {"method": method, "code": "OK"}
    )
    return value or 0.0


def _served_inactive(server: RunningServer, model: ModelId) -> bool:
    value = server.server.metrics.registry.get_sample_value("prewarm_keda_active", {"model": model})
    return value == 0.0


def _condition(kube: KubeClient, namespace: str, name: str, kind: str) -> str | None:
    scaled = kube.get(SCALED_OBJECTS.path(namespace, name)) or {}
    for condition in (scaled.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status"))
    return None


def _scale_from_zero(
    kube: KubeClient,
    keda: RunningKeda,
    server: RunningServer,
    namespace: str,
    name: str,
    *,
    created: float,
) -> float:
    """Wait until KEDA scaled ``name`` 0 -> >=1; the seconds since ``created`` (``monotonic()``
    just before its ScaledObject was created). Fails with the operator's log tail."""
    try:
        wait_for(
            lambda: _replicas(kube, namespace, name) >= 1,
            timeout_s=SCALE_TIMEOUT_S,
            interval_s=0.1,
            what=f"KEDA to scale {name} from zero",
        )
    except pytest.fail.Exception:
        pytest.fail(f"KEDA did not scale {name} from zero; operator log:\n{keda.tail(80)}")
    elapsed = time.monotonic() - created
    assert time.time() < spike_at(server), "scaled only once the spike had begun"
    return elapsed


def test_trigger_authentication_mtls_scales_from_zero_ahead_of_the_spike(
    k8s_control_plane: ControlPlane, kube: KubeClient, k8s_namespace: str, pki: Path
) -> None:
    """mTLS through a TriggerAuthentication: the granted certificate scales the spiking model's
    Deployment 0 -> 1 before the spike; the same certificate leaves the idle model at 0; a
    certificate of the right CA whose name is granted nothing is refused (PERMISSION_DENIED) and
    its Deployment stays at 0."""
    ns = k8s_namespace
    config = ControlConfig.model_validate(
        {
            "listen_address": "127.0.0.1:0",
            "auth": {"mode": "mtls"},
            "tls": {
                "cert_file": str(pki / "server.crt"),
                "key_file": str(pki / "server.key"),
                "client_ca_file": str(pki / "ca.crt"),
                "subjects": [{"common_name": "keda", "scope": "read"}],
            },
            "keda": {"stream_interval_s": 0.05},
        }
    )
    with (
        run_keda_operator(k8s_control_plane, kube, namespace=ns) as keda,
        scaler_server(config) as server,
    ):
        for client in ("keda", "stranger"):
            _apply(kube, SECRETS, _secret(ns, f"prewarm-{client}-client", {
                "ca.crt": (pki / "ca.crt").read_bytes(),
                "tls.crt": (pki / f"{client}.crt").read_bytes(),
                "tls.key": (pki / f"{client}.key").read_bytes(),
            }))  # fmt: skip
            _apply(kube, TRIGGER_AUTHENTICATIONS, _mtls_trigger_authentication(ns, client))
        for name in ("llama", "mistral", "llama-stranger"):
            _apply(kube, DEPLOYMENTS, _deployment(ns, name))

        def metadata(model: ModelId) -> dict[str, str]:
            return {
                "scalerAddress": server.address,
                "model": model,
                "quantile": "0.9",
                "leadTime": "5m",
                "targetPerReplica": "1",
                "activationProbability": "0.5",
                "enableTLS": "true",
            }

        _apply(kube, SCALED_OBJECTS, _scaled_object(
            ns, "llama-stranger", metadata=metadata(SPIKING), authentication="prewarm-stranger"
        ))  # fmt: skip
        _apply(kube, SCALED_OBJECTS, _scaled_object(
            ns, "mistral", metadata=metadata(QUIET), authentication="prewarm-keda"
        ))  # fmt: skip
        created = time.monotonic()
        _apply(kube, SCALED_OBJECTS, _scaled_object(
            ns, "llama", metadata=metadata(SPIKING), authentication="prewarm-keda"
        ))  # fmt: skip
        elapsed = _scale_from_zero(kube, keda, server, ns, "llama", created=created)
        print(f"\nKEDA {KEDA_VERSION} mTLS: ScaledObject created -> replicas>=1 in {elapsed:.2f} s")

        wait_for(lambda: _condition(kube, ns, "llama", "Active") == "True", what="llama Active")
        wait_for(
            lambda: _refusals(server, "PERMISSION_DENIED"),
            what="prewarm to refuse the stranger's certificate",
        )
        wait_for(lambda: _served_inactive(server, QUIET), what="KEDA to read the idle model")
        time.sleep(SETTLE_POLLS * 1.0)
        assert _replicas(kube, ns, "llama-stranger") == 0
        assert _replicas(kube, ns, "mistral") == 0
        assert _replicas(kube, ns, "llama") == 1  # minReplicaCount 0 -> KEDA activates to 1
        # The granted trigger got its HPA (1..N, for the metric); the idle one is read and
        # inactive; the refused one never got a metric spec, so KEDA built no HPA for it.
        assert kube.get(HPAS.path(ns, "keda-hpa-llama")) is not None
        assert _condition(kube, ns, "mistral", "Ready") == "True"
        assert _condition(kube, ns, "mistral", "Active") == "False"
        assert _condition(kube, ns, "llama-stranger", "Ready") == "False"
        assert "client certificate common name is not in control.tls.subjects" in keda.log_text()


def _mtls_trigger_authentication(namespace: str, client: str) -> dict[str, Any]:
    secret = f"prewarm-{client}-client"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": f"prewarm-{client}", "namespace": namespace},
        "spec": {
            "secretTargetRef": [
                {"parameter": "caCert", "name": secret, "key": "ca.crt"},
                {"parameter": "tlsClientCert", "name": secret, "key": "tls.crt"},
                {"parameter": "tlsClientKey", "name": secret, "key": "tls.key"},
            ]
        },
    }


def test_token_from_env_scales_from_zero_and_a_wrong_token_stays_at_zero(
    k8s_control_plane: ControlPlane, kube: KubeClient, k8s_namespace: str
) -> None:
    """A read token in the scale target's environment (from a Secret), which KEDA resolves into
    the trigger's ``tokenFromEnv``: the right token scales 0 -> 1 before the spike; a wrong one is
    refused (UNAUTHENTICATED, counted by prewarm and reported in KEDA's log) and stays at 0."""
    ns = k8s_namespace
    with (
        run_keda_operator(k8s_control_plane, kube, namespace=ns) as keda,
        scaler_server(control_config()) as server,
    ):
        tokens = {"right": READ_TOKEN.encode(), "wrong": b"not-a-prewarm-token-0123456789"}
        for label, token in tokens.items():
            _apply(kube, SECRETS, _secret(ns, f"prewarm-token-{label}", {"token": token}))
            env = [{
                "name": "PREWARM_SCALER_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": f"prewarm-token-{label}", "key": "token"}},
            }]  # fmt: skip
            _apply(kube, DEPLOYMENTS, _deployment(ns, f"llama-{label}", env=env))
        metadata = {
            "scalerAddress": server.address,
            "model": SPIKING,
            "leadTime": "5m",
            "targetPerReplica": "1",
            "tokenFromEnv": "PREWARM_SCALER_TOKEN",
        }
        _apply(kube, SCALED_OBJECTS, _scaled_object(ns, "llama-wrong", metadata=metadata))
        created = time.monotonic()
        _apply(kube, SCALED_OBJECTS, _scaled_object(ns, "llama-right", metadata=metadata))
        elapsed = _scale_from_zero(kube, keda, server, ns, "llama-right", created=created)
        print(
            f"\nKEDA {KEDA_VERSION} token: ScaledObject created -> replicas>=1 in {elapsed:.2f} s"
        )

        wait_for(
            lambda: _refusals(server, "UNAUTHENTICATED"),
            what="prewarm to refuse the wrong token",
        )
        time.sleep(SETTLE_POLLS * 1.0)
        assert _replicas(kube, ns, "llama-wrong") == 0
        assert _replicas(kube, ns, "llama-right") == 1
        assert _condition(kube, ns, "llama-right", "Active") == "True"
        assert _condition(kube, ns, "llama-wrong", "Ready") == "False"
        assert "not one of control.auth.tokens" in keda.log_text()


def test_external_push_scales_from_zero_when_the_forecast_turns_to_a_spike(
    k8s_control_plane: ControlPlane, kube: KubeClient, k8s_namespace: str
) -> None:
    """``type: external-push``: KEDA holds a StreamIsActive stream open. The model is forecast
    idle, KEDA reads it inactive; when the forecast turns to a spike, prewarm pushes the change and
    KEDA scales 0 -> 1 at once, with no IsActive poll in between (polling every 300 s)."""
    ns = k8s_namespace
    with (
        run_keda_operator(k8s_control_plane, kube, namespace=ns) as keda,
        scaler_server(control_config(), spike=False) as server,
    ):
        _apply(kube, SECRETS, _secret(ns, "prewarm-token", {"token": READ_TOKEN.encode()}))
        env = [{
            "name": "PREWARM_SCALER_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "prewarm-token", "key": "token"}},
        }]  # fmt: skip
        _apply(kube, DEPLOYMENTS, _deployment(ns, "llama", env=env))
        metadata = {
            "scalerAddress": server.address,
            "model": SPIKING,
            "leadTime": "5m",
            "targetPerReplica": "1",
            "tokenFromEnv": "PREWARM_SCALER_TOKEN",
        }
        _apply(kube, SCALED_OBJECTS, _scaled_object(
            ns, "llama", metadata=metadata, trigger_type="external-push", polling_interval_s=300
        ))  # fmt: skip
        # KEDA's scale loop checks once at start, then every pollingInterval; the push stream
        # opens with it.
        wait_for(lambda: _served(server, "IsActive") > 0, what="KEDA's first IsActive poll")
        wait_for(lambda: _condition(kube, ns, "llama", "Ready") == "True", what="llama Ready")
        time.sleep(1.0)
        assert _replicas(kube, ns, "llama") == 0
        polls = _served(server, "IsActive")

        server.view.forecast_map[SPIKING] = spiking_forecast(time.time())
        turned = time.monotonic()
        try:
            wait_for(
                lambda: _replicas(kube, ns, "llama") >= 1,
                timeout_s=20,
                interval_s=0.1,
                what="KEDA to scale llama from zero on the pushed change",
            )
        except pytest.fail.Exception:
            pytest.fail(f"the pushed change did not scale llama; operator log:\n{keda.tail(80)}")
        elapsed = time.monotonic() - turned
        print(
            f"\nKEDA {KEDA_VERSION} external-push: forecast turned -> replicas>=1 "
            f"in {elapsed:.2f} s"
        )
        assert time.time() < spike_at(server), "scaled only once the spike had begun"
        assert _served(server, "IsActive") == polls, "an IsActive poll, not the stream, scaled it"
