"""The real helm binary on the project's chart: ``helm template`` into objects, any other command.

Must not: skip when helm is missing (``require_binary`` fails the test with the command that
builds it) or talk to a cluster unless the command asked for one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.k8s import REPO_ROOT, require_binary

CHART = REPO_ROOT / "charts" / "prewarm"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Helm:
    """The result of one helm invocation."""

    returncode: int
    stdout: str
    stderr: str


def helm(*args: str) -> Helm:
    """Run the real helm binary (``PREWARM_HELM_BIN``)."""
    binary = require_binary("PREWARM_HELM_BIN")
    done = subprocess.run([str(binary), *args], check=False, capture_output=True, text=True)
    return Helm(done.returncode, done.stdout, done.stderr)


def values_args(values: Path | None, sets: Sequence[str] = ()) -> list[str]:
    """The command-line arguments for a values file and ``--set`` items."""
    args = ["--values", str(values)] if values is not None else []
    for item in sets:
        args += ["--set", item]
    return args


def render(
    values: Path | None = None,
    *,
    release: str = "prewarm",
    namespace: str = "prewarm",
    sets: Sequence[str] = (),
) -> list[Obj]:
    """``helm template`` of the chart: the rendered objects (fails the test if helm fails)."""
    result = helm(
        "template", release, str(CHART), "--namespace", namespace, *values_args(values, sets)
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
