"""Where the real components' binaries are: the builds ``hack/testenv.sh`` made for the tests.

Owns: reading a ``PREWARM_*_BIN`` variable from the environment, else from the
``export NAME=value`` lines of ``hack/testenv.env`` (which ``hack/testenv.sh`` writes), and saying,
when one is missing, what builds it and how long that takes. Must not: build or download
anything itself (``prewarm up --build`` runs ``hack/testenv.sh``, visibly, when asked).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from common.errors import FailedPrecondition

TESTENV_SCRIPT = Path("hack") / "testenv.sh"
TESTENV_FILE = Path("hack") / "testenv.env"
BUILD_TIME = (
    "about 30 minutes on 2 cores the first time (README.md, Quick start: kube-apiserver, etcd, "
    "kwok and the other test components are built from their Go modules once, cached under "
    "~/.cache/prewarm-testenv; under a second afterwards)"
)

CLUSTER_BINARIES = ("PREWARM_KUBE_APISERVER_BIN", "PREWARM_ETCD_BIN", "PREWARM_KWOK_BIN")
PROMETHEUS_BINARIES = {"PREWARM_PROMETHEUS_BIN": "prometheus", "PREWARM_PROMTOOL_BIN": "promtool"}
"""Prometheus comes from Debian's package; its binaries are also found on ``PATH``."""


class MissingComponents(FailedPrecondition):
    """Binaries of the local stack are not built; the message says how to build them."""

    def __init__(self, missing: Sequence[str], *, script: Path | None) -> None:
        self.missing = tuple(missing)
        self.script = script
        how = (
            f"run {script} once ({BUILD_TIME}), or `prewarm up --build` to run it now"
            if script is not None
            else "run ./hack/testenv.sh from a prewarm checkout once "
            f"({BUILD_TIME}), then `. hack/testenv.env` before `prewarm up`"
        )
        super().__init__(f"not built: {', '.join(self.missing)}; {how}")


def repo_root(start: Path | None = None) -> Path | None:
    """The prewarm checkout holding ``hack/testenv.sh``: ``start`` (default: the working
    directory) or a parent of it, else the checkout this package runs from; None outside one."""
    here = (start or Path.cwd()).resolve()
    package_checkout = Path(__file__).resolve().parents[2]
    for candidate in (here, *here.parents, package_checkout):
        if (candidate / TESTENV_SCRIPT).is_file():
            return candidate
    return None


def env_value(name: str, *, env_file: Path | None = None) -> str | None:
    """``name`` from the environment, else from the ``export NAME=value`` lines of ``env_file``
    (default: ``hack/testenv.env`` of :func:`repo_root`)."""
    value = os.environ.get(name)
    if value:
        return value
    if env_file is None:
        root = repo_root()
        env_file = root / TESTENV_FILE if root is not None else None
    if env_file is not None and env_file.is_file():
        for line in env_file.read_text(encoding="utf-8").splitlines():
            key, _, rest = line.removeprefix("export ").partition("=")
            if key.strip() == name and rest.strip():
                return rest.strip()
    return None


def find_binary(variable: str, *, env_file: Path | None = None) -> Path | None:
    """The executable named by ``variable`` (or, for Prometheus's, found on ``PATH``)."""
    value = env_value(variable, env_file=env_file)
    if value is None and variable in PROMETHEUS_BINARIES:
        value = shutil.which(PROMETHEUS_BINARIES[variable])
    if value is None or not os.access(value, os.X_OK):
        return None
    return Path(value)


def require_binaries(variables: Sequence[str], *, env_file: Path | None = None) -> dict[str, Path]:
    """Each variable's executable; :class:`MissingComponents` naming every missing one."""
    found = {v: find_binary(v, env_file=env_file) for v in variables}
    missing = [v for v, path in found.items() if path is None]
    if missing:
        root = repo_root()
        raise MissingComponents(missing, script=root / TESTENV_SCRIPT if root else None)
    return {v: path for v, path in found.items() if path is not None}


def stack_binaries(*, env_file: Path | None = None) -> dict[str, Path]:
    """Every binary ``prewarm up`` starts (Prometheus, promtool, kube-apiserver, etcd, kwok)."""
    return require_binaries((*PROMETHEUS_BINARIES, *CLUSTER_BINARIES), env_file=env_file)
