"""Fixtures of the actuator tests: a KubeClient on the session's real apiserver, a config per test,
and CRD installers (each installs a minimal stand-in CRD and removes it again afterwards)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig, RetryConfig
from actuator.kube import KubeClient
from tests.harness.k8s import ControlPlane, wait_for

CRDS = Path(__file__).with_name("crds")

# Fast retries: the tests exercise retry paths, not production backoff.
FAST_RETRY = RetryConfig(attempts=10, initial_backoff_s=0.05, max_backoff_s=0.5)


@pytest.fixture
def kube(k8s_api: k8s_client.ApiClient) -> KubeClient:
    """An admin KubeClient with fast retries."""
    return KubeClient(k8s_api, FAST_RETRY)


@pytest.fixture
def config(k8s_namespace: str) -> ActuatorConfig:
    """Actuator settings whose own objects go to this test's namespace."""
    return ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)


def install_crd(kube: KubeClient, file_name: str) -> str:
    """Apply a CRD from tests/actuator/crds and wait until its group/version is served."""
    crd = yaml.safe_load((CRDS / file_name).read_text(encoding="utf-8"))
    name = crd["metadata"]["name"]
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    kube.apply(path, crd, field_manager="test", dry_run=False)
    group_version = f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    plural = crd["spec"]["names"]["plural"]

    def served() -> bool:
        listing = kube.get(f"/apis/{group_version}")
        return listing is not None and any(r["name"] == plural for r in listing["resources"])

    wait_for(served, what=f"{group_version} served")
    return path


def remove_crd(kube: KubeClient, path: str, group_version: str) -> None:
    """Delete a CRD and wait until its group/version is no longer served."""
    kube.delete(path, dry_run=False)
    wait_for(lambda: kube.get(f"/apis/{group_version}") is None, what=f"{group_version} gone")


@pytest.fixture
def keda_crd(kube: KubeClient) -> Iterator[None]:
    """The KEDA ScaledObject CRD (minimal stand-in), for one test."""
    path = install_crd(kube, "scaledobjects.yaml")
    yield
    remove_crd(kube, path, "keda.sh/v1alpha1")


@pytest.fixture
def capi_crd(kube: KubeClient) -> Iterator[None]:
    """The Cluster API MachineDeployment CRD (minimal stand-in), for one test."""
    path = install_crd(kube, "machinedeployments.yaml")
    yield
    remove_crd(kube, path, "cluster.x-k8s.io/v1beta1")


@pytest.fixture
def plane(k8s_control_plane: ControlPlane) -> ControlPlane:
    """The session's control plane (to restart its apiserver in fault tests)."""
    return k8s_control_plane


@pytest.fixture
def warnings_of(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog at WARNING for the actuator's loggers."""
    caplog.set_level(logging.WARNING, logger="actuator")
    return caplog
