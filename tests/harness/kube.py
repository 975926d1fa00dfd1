"""The project's ``KubeClient`` as the tests use it: fast retries, and stand-in CRDs installed on
the real apiserver and removed again.

A stand-in CRD is MINIMAL: the real group, version and kind with only the spec fields the code under
test writes, since no operator (KEDA, Cluster API, Prometheus Operator) runs here. Must not: leave a
CRD installed after the test or module that installed it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from actuator.config import RetryConfig
from actuator.kube import KubeClient
from tests.harness.k8s import wait_for

FAST_RETRY = RetryConfig(attempts=10, initial_backoff_s=0.05, max_backoff_s=0.5)
"""Fast retries: the tests exercise retry paths, not production backoff."""


def install_crd(kube: KubeClient, file: Path) -> str:
    """Apply the CRD in ``file`` and wait until the apiserver serves its kind; returns its path."""
    crd = yaml.safe_load(file.read_text(encoding="utf-8"))
    name = crd["metadata"]["name"]
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
    kube.apply(path, crd, field_manager="test", dry_run=False)
    versions = crd["spec"]["versions"]
    stored = next((v for v in versions if v.get("storage")), versions[0])
    group_version = f"{crd['spec']['group']}/{stored['name']}"
    plural = crd["spec"]["names"]["plural"]

    def served() -> bool:
        listing = kube.get(f"/apis/{group_version}")
        return listing is not None and any(r["name"] == plural for r in listing["resources"])

    wait_for(served, what=f"{group_version} served")
    return path


def remove_crds(kube: KubeClient, paths: Iterable[str], group_version: str) -> None:
    """Delete the CRDs at ``paths`` (all of ``group_version``) and wait until it is not served."""
    for path in paths:
        kube.delete(path, dry_run=False)
    wait_for(lambda: kube.get(f"/apis/{group_version}") is None, what=f"{group_version} gone")
