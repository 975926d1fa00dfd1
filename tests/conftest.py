"""Test-wide fixtures and marker handling.

``gpu`` tests are skipped when CUDA is not available; every other marker (``prometheus``, ``k8s``,
``helm``) runs against real components that ``hack/testenv.sh`` installs, and fails loudly when they
are missing rather than skipping.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The session-scoped real control plane (etcd + kube-apiserver + kwok) and its helpers.
from tests.harness.k8s import k8s_api, k8s_control_plane, k8s_namespace  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_TRACES = REPO_ROOT.parent / "shared" / "traces"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip_gpu = pytest.mark.skip(reason="needs CUDA; none available on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT
