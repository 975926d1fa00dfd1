"""The REAL CustomResourceDefinitions of KEDA, KServe, Knative Serving, Karpenter and the
Prometheus Operator.

``hack/testenv.d/40-crds.sh`` copies them, unchanged, from those projects' own Go modules (pinned
releases, fetched through the Go module proxy) into the test-environment cache. Unlike the
minimal stand-ins of ``tests/actuator/crds/``, these carry the projects' full schemas, so the
apiserver validates and prunes what prewarm writes exactly as it would in a cluster that runs
them. No operator of these projects runs here unless a test starts one.

Must not: download anything, skip when the files are missing (the test FAILS, naming
``hack/testenv.sh``), or leave a CRD installed after the test that installed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from actuator.kube import KubeClient
from tests.harness.k8s import testenv_value, wait_for
from tests.harness.kube import install_crd

VARIABLE = "PREWARM_CRDS_DIR"

KEDA_SCALED_OBJECTS = "keda.sh_scaledobjects.yaml"
KEDA_TRIGGER_AUTHENTICATIONS = "keda.sh_triggerauthentications.yaml"
KEDA_CLUSTER_TRIGGER_AUTHENTICATIONS = "keda.sh_clustertriggerauthentications.yaml"
KSERVE_INFERENCE_SERVICES = "serving.kserve.io_inferenceservices.yaml"
KNATIVE_SERVICES = "serving.knative.dev_services.yaml"
KARPENTER_NODE_POOLS = "karpenter.sh_nodepools.yaml"
KARPENTER_NODE_CLAIMS = "karpenter.sh_nodeclaims.yaml"
POD_MONITORS = "monitoring.coreos.com_podmonitors.yaml"
SERVICE_MONITORS = "monitoring.coreos.com_servicemonitors.yaml"
PROMETHEUS_RULES = "monitoring.coreos.com_prometheusrules.yaml"


def crds_dir() -> Path:
    """The directory of the fetched CRD files; fails the test (never skips) without it."""
    value = testenv_value(VARIABLE)
    if not value or not (Path(value) / ".complete").is_file():
        pytest.fail(
            f"{VARIABLE} does not name a complete CRD directory ({value!r}): run "
            "./hack/testenv.sh once (hack/testenv.d/40-crds.sh fetches them)",
            pytrace=False,
        )
    return Path(value)


def crd_file(name: str) -> Path:
    """One fetched CRD file by its name (the constants above)."""
    path = crds_dir() / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run ./hack/testenv.sh again", pytrace=False)
    return path


@contextmanager
def real_crds(kube: KubeClient, *names: str) -> Iterator[None]:
    """Install the CRDs ``names`` for the block; delete them after, waiting until their kinds
    are no longer served."""
    installed: list[tuple[str, str, str]] = []
    try:
        for name in names:
            crd = yaml.safe_load(crd_file(name).read_text(encoding="utf-8"))
            path = install_crd(kube, crd_file(name))
            installed.append((path, crd["spec"]["group"], crd["spec"]["names"]["plural"]))
        yield
    finally:
        for path, group, plural in installed:
            kube.delete(path, dry_run=False)

            def gone(group: str = group, plural: str = plural) -> bool:
                groups = kube.get(f"/apis/{group}")
                if groups is None:
                    return True
                version = groups["preferredVersion"]["groupVersion"]
                listing = kube.get(f"/apis/{version}")
                return listing is None or all(r["name"] != plural for r in listing["resources"])

            wait_for(gone, what=f"{plural}.{group} gone")
