"""Every command the README and ``docs/`` show is run by a test, so the documents cannot drift.

Each command extracted from a shell block (:mod:`tests.docs.commands`) must be in exactly one of
two registries, or the first test fails and names it:

- ``RUN_HERE``: run by this module as the user would type it, from a working directory holding the
  files the command names (``traffic.csv`` and ``my-traffic.csv``: a day and a half of three models'
  requests; ``models.yaml``: a catalog of them; ``prewarm.yaml``: settings pointing at the real
  Prometheus and kube-apiserver of the test harness). Only host names a user would replace are
  substituted (``http://prometheus:9090`` becomes the real Prometheus). The control verbs reach the
  daemon through ``PREWARM_SERVER`` and ``PREWARM_TOKEN``, as a user who exported them would.
- ``RUN_ELSEWHERE``: run by another test, named with a string that test's source must contain, and
  why it runs there (a real cluster component, a bigger fixture, or the CI itself).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.ids import ModelId
from forecaster.types import SeriesBatch
from prewarm.up.processes import free_port, port_open
from tests.docs.commands import REPO_ROOT, documented_commands
from tests.harness.k8s import ControlPlane
from tests.harness.prometheus import RunningPrometheus, prometheus_with_history

PREWARM = [sys.executable, "-m", "prewarm"]
MODELS = ("llama-70b", "chat", "org/adapter-7")
TOKEN = "5f0c2a9e7b3d41c8a6e2f9b0d4c7a1e3"  # as `openssl rand -hex 16` makes one


@dataclass(frozen=True, slots=True)
class Elsewhere:
    """A command run by another test: its file, a string its source holds, and why there."""

    test: str
    evidence: str
    why: str


OFFLINE = "offline"
PROMETHEUS = "prometheus"
DAEMON = "daemon"

RUN_HERE: dict[str, str] = {
    "prewarm forecast --trace traffic.csv --horizon 30m": OFFLINE,
    "prewarm backtest --trace traffic.csv --horizon 15m": OFFLINE,
    "prewarm backtest --trace traffic.csv --history 6h,12h,24h": OFFLINE,
    "prewarm bench --trace traffic.csv --sweep --plot out.png": OFFLINE,
    "prewarm bench --trace builtin:azure-functions-2019-100fn": OFFLINE,
    "prewarm bench --trace my-traffic.csv --catalog models.yaml --json out.json --plot out.png": (
        OFFLINE
    ),
    "prewarm bench --trace my-traffic.csv --policies keepalive-10m,tyche,prewarm --sweep": OFFLINE,
    "prewarm bench --trace my-traffic.csv --budget-sweep": OFFLINE,
    "prewarm forecast --prometheus http://prometheus:9090 --json -": PROMETHEUS,
    "prewarm dashboards render --prometheus http://prometheus:9090 --out dash/": PROMETHEUS,
    "prewarm run --config prewarm.yaml": DAEMON,
    "prewarm agent --config prewarm.yaml": DAEMON,
    "prewarm warm llama-70b --replicas 4 --at 08:45 --for 2h": DAEMON,
    "prewarm explain llama-70b": DAEMON,
}

_WALKTHROUGH = "tests/chart/test_walkthrough.py"
_WALKTHROUGH_WHY = (
    "the README's vLLM walkthrough: its files applied to the real apiserver with the projects' "
    "own CRDs and the chart rendered with its values (kube-prometheus-stack's chart cannot be "
    "fetched here, its values are checked instead)"
)
_UP = "tests/up/test_up.py"
_UP_WHY = "prewarm up's own test: the stack started as a subprocess, the CLI verbs against it"
RUN_ELSEWHERE: dict[str, Elsewhere] = {
    "prewarm up": Elsewhere(_UP, '"prewarm", "up", "--dir"', _UP_WHY + " (bounded by --duration)"),
    "export PREWARM_SERVER=127.0.0.1:PORT PREWARM_TOKEN=$(cat ~/.cache/prewarm-up/control-token)": (
        Elsewhere(_UP, '"PREWARM_SERVER": server, "PREWARM_TOKEN": token', _UP_WHY)
    ),
    "prewarm plan": Elsewhere(_UP, '"readme plan": ["plan"]', _UP_WHY),
    "prewarm explain m-large/c111": Elsewhere(
        _UP, '"readme explain": ["explain", "m-large/c111"]', _UP_WHY
    ),
    "prewarm warm m-large/c111 --replicas 2 --for 30m": Elsewhere(
        _UP,
        '["warm", wanted, "--replicas", "2", "--for", "30m"',
        _UP_WHY + "; it warms a model then at 0 replicas, so that the floor it raises shows",
    ),
    "make demo": Elsewhere(
        "tests/demo/test_demo.py",
        '"demo"',
        "`make demo` is hack/bootstrap.sh then `prewarm demo`; the demo test runs it with fewer "
        "spikes and the CI runs the bootstrap",
    ),
    "make test": Elsewhere(".ci/run", "make test", "it is the CI itself"),
    "prewarm handoff wait --model org/llama --timeout 300s": Elsewhere(
        "tests/acceptance/test_engines.py",
        '"handoff", "wait", "--model"',
        "needs a model the agent holds and a serving process to hand it to",
    ),
    "prewarm handoff hold --model org/llama --ttl 30s": Elsewhere(
        "tests/acceptance/test_engines.py",
        '"handoff", "hold", "--model"',
        "needs a model the agent holds and a serving process to hand it to",
    ),
    "helm install prewarm charts/prewarm --namespace prewarm --create-namespace --set "
    "config.forecaster.prometheus.url=http://prometheus.monitoring:9090": Elsewhere(
        "tests/chart/test_install.py",
        'helm("install", release, str(CHART)',
        "the real `helm install` of the chart into the real apiserver",
    ),
    "helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack "
    "--namespace monitoring --create-namespace -f kube-prometheus-stack-values.yaml": Elsewhere(
        _WALKTHROUGH, "kube-prometheus-stack-values.yaml", _WALKTHROUGH_WHY
    ),
    "kubectl apply -f nodepool.yaml": Elsewhere(_WALKTHROUGH, "nodepool.yaml", _WALKTHROUGH_WHY),
    "kubectl create namespace llm && kubectl apply -f vllm.yaml": Elsewhere(
        _WALKTHROUGH, "vllm.yaml", _WALKTHROUGH_WHY
    ),
    "helm install prewarm charts/prewarm --namespace prewarm --create-namespace -f "
    "prewarm-values.yaml": Elsewhere(_WALKTHROUGH, "prewarm-values.yaml", _WALKTHROUGH_WHY),
    'grpcurl -plaintext -H "authorization: Bearer $PREWARM_TOKEN" -d \'{"scalerMetadata": '
    '{"model": "llama-70b", "leadTime": "10m"}}\' prewarm.prewarm.svc:50071 '
    "externalscaler.ExternalScaler/IsActive": Elsewhere(
        "tests/control/test_keda.py",
        "IsActive",
        "KEDA's external-scaler calls on the real control server (grpcurl is not installed here)",
    ),
    'grpcurl -plaintext -H "authorization: Bearer $PREWARM_TOKEN" -d \'{"scaledObjectRef": '
    '{"scalerMetadata": {"model": "llama-70b", "leadTime": "10m"}}}\' prewarm.prewarm.svc:50071 '
    "externalscaler.ExternalScaler/GetMetrics": Elsewhere(
        "tests/control/test_keda.py",
        "GetMetrics",
        "KEDA's external-scaler calls on the real control server (grpcurl is not installed here)",
    ),
}


def test_every_documented_command_is_registered() -> None:
    documented = {command.text: command for command in documented_commands()}
    unregistered = [
        f"{command.document}:{command.line}: {text}"
        for text, command in documented.items()
        if text not in RUN_HERE and text not in RUN_ELSEWHERE
    ]
    assert not unregistered, "documented commands no test runs:\n" + "\n".join(unregistered)
    stale = sorted((set(RUN_HERE) | set(RUN_ELSEWHERE)) - set(documented))
    assert not stale, f"registered commands no document shows any more: {stale}"
    assert not set(RUN_HERE) & set(RUN_ELSEWHERE)


@pytest.mark.parametrize("command", sorted(RUN_ELSEWHERE))
def test_a_command_run_elsewhere_is_in_that_test(command: str) -> None:
    where = RUN_ELSEWHERE[command]
    source = (REPO_ROOT / where.test).read_text(encoding="utf-8")
    assert where.evidence in source, f"{where.test} no longer holds {where.evidence!r}"


# ------------------------------------------------------------------------------ the user's files


def _series(days: float, step_s: float, *, end_s: float) -> SeriesBatch:
    """Three models with a daily cycle and a morning spike; the sparse one a few times an hour."""
    steps = int(days * 86400 / step_s)
    start = end_s - steps * step_s
    hours = ((start + np.arange(steps) * step_s) % 86400) / 3600
    rng = np.random.default_rng(7)
    rows = []
    for base in (3.0, 0.8, 0.03):
        rate = base * (1 + 0.8 * np.sin(2 * np.pi * (hours - 6) / 24)) + 4 * base * (
            (hours >= 9) & (hours < 10)
        )
        rows.append(rng.poisson(rate * step_s / 60))
    models = tuple(ModelId(name) for name in MODELS)
    return SeriesBatch(models=models, start_s=start, step_s=step_s, counts=np.array(rows, float))


def _write_trace(batch: SeriesBatch, path: Path) -> None:
    lines = ["timestamp,model,requests"]
    for row, model in enumerate(batch.models):
        for step, count in enumerate(batch.counts[row]):
            if count:
                at = dt.datetime.fromtimestamp(batch.start_s + step * batch.step_s, dt.UTC)
                lines.append(f"{at:%Y-%m-%dT%H:%M:%SZ},{model},{int(count)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


CATALOG = {
    "models": {
        "llama-70b": {"weights_gb": 140, "replica_rps": 4, "compile_s": 60},
        "chat": {"weights_gb": 16, "replica_rps": 8},
        "org/adapter-7": {"weights_gb": 1, "replica_rps": 8},
    }
}


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with the files the documented commands name."""
    directory = tmp_path_factory.mktemp("user")
    batch = _series(1.5, 600.0, end_s=1_764_547_200.0)  # 2025-12-01T00:00Z
    _write_trace(batch, directory / "traffic.csv")
    _write_trace(batch, directory / "my-traffic.csv")
    (directory / "models.yaml").write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    return directory


def _argv(command: str, substitutions: Mapping[str, str] | None = None) -> list[str]:
    for documented, real in (substitutions or {}).items():
        command = command.replace(documented, real)
    words = shlex.split(command)
    assert words[0] == "prewarm", command
    return [*PREWARM, *words[1:]]


def _outputs(command: str) -> list[str]:
    """The files a command says it writes (``--json PATH``, ``--plot PATH``)."""
    words = shlex.split(command)
    return [
        words[index + 1]
        for index, word in enumerate(words[:-1])
        if word in ("--json", "--plot")
        and words[index + 1] not in ("-",)
        and not words[index + 1].startswith("-")
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", sorted(command for command, kind in RUN_HERE.items() if kind == OFFLINE)
)
def test_an_offline_command_runs_as_documented(command: str, user_dir: Path) -> None:
    for output in _outputs(command):
        (user_dir / output).unlink(missing_ok=True)
    done = subprocess.run(_argv(command), cwd=user_dir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), done.stderr[-3000:]
    for output in _outputs(command):
        assert (user_dir / output).stat().st_size > 0, output


# ---------------------------------------------------------------------- Prometheus and the daemon


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPrometheus]:
    """A real Prometheus with the last two days of the three models, up to now."""
    now = time.time()
    batch = _series(2, 60.0, end_s=(now // 60) * 60)
    with prometheus_with_history(batch, tmp_path_factory.mktemp("prometheus")) as running:
        yield running


@pytest.mark.prometheus
@pytest.mark.parametrize(
    "command", sorted(command for command, kind in RUN_HERE.items() if kind == PROMETHEUS)
)
def test_a_prometheus_command_runs_as_documented(
    command: str, prometheus: RunningPrometheus, tmp_path: Path
) -> None:
    argv = _argv(command, {"http://prometheus:9090": prometheus.url})
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if "--json" in argv:
        assert "llama-70b" in json.dumps(json.loads(done.stdout))
    else:
        pages = sorted((tmp_path / "dash").rglob("index.html"))
        assert len(pages) > 1, done.stderr  # the index and one page per dashboard


def _wait_for(
    probe: Callable[[], bool], process: subprocess.Popen[str], what: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited: {process.communicate()[0][-3000:]}"
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} not ready in {timeout_s} s")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


@pytest.mark.k8s
@pytest.mark.prometheus
@pytest.mark.slow
def test_the_daemon_commands_run_as_documented(
    tmp_path: Path,
    prometheus: RunningPrometheus,
    k8s_control_plane: ControlPlane,
    k8s_namespace: str,
) -> None:
    """``prewarm run`` and ``prewarm agent`` from one ``prewarm.yaml``, then the control verbs."""
    http_port, control_port, agent_port = free_port(), free_port(), free_port()
    (tmp_path / "token").write_text(TOKEN, encoding="utf-8")
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(CATALOG), encoding="utf-8")
    settings = {
        "forecaster": {"prometheus": {"url": prometheus.url}, "history_window_s": 2 * 86400},
        "actuator": {"namespace": k8s_namespace},
        "daemon": {
            "tick_s": 1.0,
            "http_port": http_port,
            "shutdown_grace_s": 5.0,
            "leader_election": {"lease_duration_s": 4, "retry_period_s": 1.0},
        },
        "control": {
            "listen_address": f"127.0.0.1:{control_port}",
            "namespace": k8s_namespace,
            "auth": {
                "tokens": [{"name": "docs", "file": str(tmp_path / "token"), "scope": "write"}]
            },
        },
        "agent": {
            "listen": f"127.0.0.1:{agent_port}",
            "cache_dir": str(tmp_path / "agent-cache"),
            "shm_dir": str(tmp_path / "agent-shm"),
            "auth": {"mode": "token", "token_file": str(tmp_path / "token")},
        },
    }
    (tmp_path / "prewarm.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    env = {
        **os.environ,
        "KUBECONFIG": str(k8s_control_plane.kubeconfig),
        "PREWARM_SERVER": f"127.0.0.1:{control_port}",
        "PREWARM_TOKEN": TOKEN,
        "COLUMNS": "200",  # a terminal wide enough that rich's tables show the model's name
    }

    def start(command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            _argv(command),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    daemon = start("prewarm run --config prewarm.yaml")
    agent = start("prewarm agent --config prewarm.yaml")
    try:
        _wait_for(lambda: _ready(f"http://127.0.0.1:{http_port}/readyz"), daemon, "daemon", 120)
        _wait_for(lambda: port_open(agent_port), agent, "agent", 120)
        for command in (
            "prewarm warm llama-70b --replicas 4 --at 08:45 --for 2h",
            "prewarm explain llama-70b",
        ):
            done = subprocess.run(
                _argv(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (command, done.stderr[-3000:])
            assert "llama-70b" in done.stdout, (command, done.stdout)
    finally:
        daemon_rc, daemon_log = _stop(daemon)
        agent_rc, agent_log = _stop(agent)
    assert daemon_rc == 0, daemon_log[-3000:]
    assert agent_rc == 0, agent_log[-3000:]
