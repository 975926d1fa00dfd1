"""Fixtures of the actuator tests: a KubeClient on the session's real apiserver, a config per test,
and the KEDA and Cluster API stand-in CRDs of ``crds/`` (installed for one test, then removed)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from actuator.config import ActuatorConfig
from actuator.kube import KubeClient
from tests.harness.k8s import ControlPlane
from tests.harness.kube import FAST_RETRY, install_crd, remove_crds

CRDS = Path(__file__).with_name("crds")


@pytest.fixture
def kube(k8s_api: k8s_client.ApiClient) -> KubeClient:
    """An admin KubeClient with fast retries."""
    return KubeClient(k8s_api, FAST_RETRY)


@pytest.fixture
def config(k8s_namespace: str) -> ActuatorConfig:
    """Actuator settings whose own objects go to this test's namespace."""
    return ActuatorConfig(namespace=k8s_namespace, retry=FAST_RETRY)


@pytest.fixture
def keda_crd(kube: KubeClient) -> Iterator[None]:
    """The KEDA ScaledObject CRD (minimal stand-in), for one test."""
    path = install_crd(kube, CRDS / "scaledobjects.yaml")
    yield
    remove_crds(kube, [path], "keda.sh/v1alpha1")


@pytest.fixture
def capi_crd(kube: KubeClient) -> Iterator[None]:
    """The Cluster API MachineDeployment CRD (minimal stand-in), for one test."""
    path = install_crd(kube, CRDS / "machinedeployments.yaml")
    yield
    remove_crds(kube, [path], "cluster.x-k8s.io/v1beta1")


@pytest.fixture
def plane(k8s_control_plane: ControlPlane) -> ControlPlane:
    """The session's control plane (to restart its apiserver in fault tests)."""
    return k8s_control_plane


@pytest.fixture
def warnings_of(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog at WARNING for the actuator's loggers."""
    caplog.set_level(logging.WARNING, logger="actuator")
    return caplog
