"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ kwok) on 127.0.0.1.

Owns: the pytest side of :mod:`prewarm.up.cluster` (which starts the processes, also for
``prewarm up``): finding the binaries, session fixtures, a namespace per test, and ``wait_for``.

Must not: download anything, skip when a binary is missing (the ``k8s`` tests FAIL with a message
naming ``hack/testenv.sh``), or share state between test sessions. The binaries come from
``PREWARM_*_BIN`` variables (``hack/testenv.sh`` writes them to ``hack/testenv.env``; when they are
not in the environment that file is read directly, so a bare ``pytest`` works after one build).

There is no kube-controller-manager and no kube-scheduler: Deployments are stored but create no
ReplicaSets or pods, and pods only run when created with ``spec.nodeName`` on a kwok node. Tests
assert on the objects the actuator writes, which is what the actuator controls.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from prewarm.up import cluster
from prewarm.up.cluster import (
    DEFAULT_POOL_LABEL,
    GPU_RESOURCE,
    KWOK_NODE_ANNOTATION,
    KWOK_STAGES,
    ControlPlane,
    make_kwok_nodes,
    make_namespace,
)
from prewarm.up.processes import free_port
from prewarm.up.testenv import env_value

__all__ = [
    "DEFAULT_POOL_LABEL",
    "GPU_RESOURCE",
    "KWOK_NODE_ANNOTATION",
    "KWOK_STAGES",
    "ControlPlane",
    "free_port",
    "make_kwok_nodes",
    "make_namespace",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTENV_FILE = REPO_ROOT / "hack" / "testenv.env"


def testenv_value(name: str) -> str | None:
    """``name`` from the environment, else from the ``export NAME=value`` lines of testenv.env."""
    return env_value(name, env_file=TESTENV_FILE)


def require_binary(variable: str) -> Path:
    """The binary named by ``variable``; fails the test (never skips) when it is not built."""
    value = testenv_value(variable)
    if value is None or not os.access(value, os.X_OK):
        pytest.fail(
            f"{variable} is not set to an executable ({value!r}): run ./hack/testenv.sh once "
            "(builds kube-apiserver, etcd, kwok and helm into ~/.cache/prewarm-testenv)",
            pytrace=False,
        )
    return Path(value)


def start_control_plane(workdir: Path, *, with_kwok: bool = True) -> ControlPlane:
    """Start etcd, kube-apiserver and (``with_kwok``) kwok under ``workdir``; ready on return
    (:func:`prewarm.up.cluster.start_control_plane` with the binaries hack/testenv.sh built)."""
    return cluster.start_control_plane(
        workdir,
        apiserver_bin=require_binary("PREWARM_KUBE_APISERVER_BIN"),
        etcd_bin=require_binary("PREWARM_ETCD_BIN"),
        kwok_bin=require_binary("PREWARM_KWOK_BIN") if with_kwok else None,
    )


@contextlib.contextmanager
def control_plane_session(*, with_kwok: bool = True) -> Iterator[ControlPlane]:
    """A control plane in a fresh temporary directory, removed (with its logs) afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="prewarm-k8s-"))
    plane = start_control_plane(workdir, with_kwok=with_kwok)
    try:
        yield plane
    finally:
        plane.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def k8s_control_plane() -> Iterator[ControlPlane]:
    """One etcd + kube-apiserver + kwok for the whole test session (tests use own namespaces)."""
    with control_plane_session() as plane:
        yield plane


@pytest.fixture
def k8s_api(k8s_control_plane: ControlPlane) -> k8s_client.ApiClient:
    """A cluster-admin ``ApiClient`` for one test."""
    return k8s_control_plane.admin_client()


_namespace_counter = iter(range(1, 1_000_000))


@pytest.fixture
def k8s_namespace(k8s_api: k8s_client.ApiClient) -> str:
    """A fresh namespace with its ``default`` ServiceAccount (no controller-manager creates it)."""
    name = f"t{os.getpid()}-{next(_namespace_counter)}"
    make_namespace(k8s_api, name)
    return name


def wait_for(
    predicate: Any, *, timeout_s: float = 30.0, interval_s: float = 0.2, what: str = "condition"
) -> Any:
    """Poll ``predicate()`` until it returns a truthy value (returned); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
