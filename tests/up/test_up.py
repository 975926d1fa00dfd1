"""``prewarm up`` as a user runs it: a real subprocess, bounded by ``--duration``.

It starts the whole local stack (Prometheus with the bundled ServeGen trace's history, etcd +
kube-apiserver + kwok, one real ``prewarm agent`` process per node, the daemon in active mode) and
replays ten minutes of the trace at 12x. Asserted while it runs: at least one preload (an agent,
asked over its own gRPC API with the generated token, holds a model in host memory) and one replica
floor (a serving Deployment's replicas raised above 0, read from the apiserver), each also printed
by ``prewarm up``; live traffic in Prometheus after the history's end, on the stack's clock;
``prewarm plan``, ``prewarm explain MODEL`` and ``prewarm warm MODEL`` answer
against its control API with the printed server and token, and the warm request (2 replicas of a
model at 0) reaches its Deployment at the next ticks. Asserted after: exit 0, every child
process gone, every port it listened on closed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from actuator.floors import ORIGINAL_REPLICAS
from prewarm.up.processes import port_open
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.harness.k8s import require_binary
from tests.harness.prometheus import binaries

pytestmark = [pytest.mark.slow, pytest.mark.k8s, pytest.mark.prometheus]

REPO = Path(__file__).resolve().parents[2]
SPEED = 12
"""Ten minutes of trace in 50 s: time for the daemon's first ticks and three CLI calls."""
PRELOAD = re.compile(r"preload: (\S+) held in host memory by the agent on (\S+)")
FLOOR = re.compile(r"floor: deployment (\S+)/(\S+) \((\S+)\) replicas 0 -> (\d+)")


class Lines:
    """The subprocess's stdout, line by line, read in a thread."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def _arriving(self, timeout_s: float) -> Iterator[str]:
        """Each new line (also kept in ``seen``) until the stream ends or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                return
            self.seen.append(line)
            yield line

    def until(self, pattern: re.Pattern[str], *, timeout_s: float) -> re.Match[str]:
        """The first line (seen before or arriving within ``timeout_s``) matching ``pattern``."""
        for line in list(self.seen):
            if found := pattern.search(line):
                return found
        for line in self._arriving(timeout_s):
            if found := pattern.search(line):
                return found
        raise AssertionError(
            f"no line matching {pattern.pattern!r}; output:\n" + "\n".join(self.seen)
        )

    def rest(self, timeout_s: float) -> None:
        """Read until the stream ends (or ``timeout_s``)."""
        for _ in self._arriving(timeout_s):
            pass


def _held(address: str, token: str) -> dict[str, int]:
    """Model -> proto tier the agent at ``address`` holds, from its Status."""
    with grpc.insecure_channel(address) as channel:
        status = pb_grpc.GpuAgentStub(channel).Status(
            pb.StatusRequest(), timeout=10, metadata=(("authorization", f"Bearer {token}"),)
        )
    return {m.model_id: m.tier for m in status.models}


def _query(url: str, expr: str, *, at_s: float) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    params = urllib.parse.urlencode({"query": expr, "time": f"{at_s:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as answer:
        body: dict[str, Any] = json.loads(answer.read())
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours would still answer; the stack's children are reaped by prewarm up.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_prewarm_up_replays_a_trace_preloads_raises_a_floor_answers_the_cli_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    # The stack uses the builds the other k8s and prometheus tests use: fail (never skip) early.
    binaries()
    for variable in ("PREWARM_KUBE_APISERVER_BIN", "PREWARM_ETCD_BIN", "PREWARM_KWOK_BIN"):
        require_binary(variable)
    state = tmp_path / "up"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "prewarm", "up", "--dir", str(state), "--duration", "10m",
         "--speed", str(SPEED)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = Lines(process.stdout)
    try:
        lines.until(re.compile("Ctrl-C stops everything"), timeout_s=120)
        stack: dict[str, Any] = json.loads((state / "stack.json").read_text())
        server, token_file = stack["control_server"], stack["control_token_file"]
        assert server.startswith("127.0.0.1:")
        assert any(f"export PREWARM_SERVER={server}" in line for line in lines.seen)

        preload = lines.until(PRELOAD, timeout_s=60)
        model, node = preload[1], preload[2]
        agent_token = Path(stack["agent_token_file"]).read_text().strip()
        assert _held(stack["agents"][node], agent_token)[model] == pb.TIER_HOST

        floor = lines.until(FLOOR, timeout_s=60)
        namespace = floor[1]
        api = k8s_config.new_client_from_config(config_file=stack["kubeconfig"])  # type: ignore[no-untyped-call]
        with api:
            deployments = k8s_client.AppsV1Api(api).list_namespaced_deployment(namespace).items
        # Floors the daemon holds now: raised from the user's 0, the original recorded beside.
        raised = {
            d.metadata.name: d.spec.replicas
            for d in deployments
            if (d.spec.replicas or 0) > 0
            and (d.metadata.annotations or {}).get(ORIGINAL_REPLICAS) == "0"
        }
        assert raised, [(d.metadata.name, d.spec.replicas) for d in deployments]
        # A model at 0 replicas now: `prewarm warm` asks for 2, the next ticks apply it.
        models = {name: model for model, name in stack["workloads"].items()}
        idle = sorted(models[d.metadata.name] for d in deployments if not d.spec.replicas)
        assert idle, "every Deployment has replicas: nothing left to warm by hand"
        wanted = idle[0]

        # Live traffic reaches Prometheus on the stack's clock: samples after the history's end.
        # Over the minute before start + 60 s: the history's last sample and a push every 12 s.
        live = _query(stack["prometheus_url"], "count_over_time(inference_requests_total[1m])",
                      at_s=stack["replay_start_s"] + 60)  # fmt: skip
        assert len(live) == len(stack["workloads"])
        assert min(int(r["value"][1]) for r in live) >= 3, live

        # The CLI verbs against the stack, as the README and `prewarm up` print them (the export
        # line: PREWARM_SERVER and PREWARM_TOKEN), all at once (each is a process).
        token = Path(token_file).read_text(encoding="utf-8").strip()
        env = {**os.environ, "PREWARM_SERVER": server, "PREWARM_TOKEN": token}
        calls = {
            "plan": ["plan", "--json", "-"],
            "explain": ["explain", model],
            "warm": ["warm", wanted, "--replicas", "2", "--for", "30m", "--json", "-"],
            # The README's own lines, word for word.
            "readme plan": ["plan"],
            "readme explain": ["explain", "m-large/c111"],
        }
        running = {
            verb: subprocess.Popen(
                [sys.executable, "-m", "prewarm", *argv],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for verb, argv in calls.items()
        }
        answers = {verb: call.communicate(timeout=60) for verb, call in running.items()}
        for verb, call in running.items():
            assert call.returncode == 0, (verb, answers[verb])
        plan = json.loads(answers["plan"][0])
        assert plan["available"] is True
        kinds = {action["kind"] for action in plan["actions"]}
        assert kinds & {"preload", "replica_floor"}, plan
        assert f"explain {model}" in answers["explain"][0]
        assert "explain m-large/c111" in answers["readme explain"][0]
        assert answers["readme plan"][0].strip()
        stored = json.loads(answers["warm"][0])
        assert stored["model"] == wanted
        assert stored["replicas"] == 2
        lines.until(
            re.compile(rf"floor: deployment \S+ \({re.escape(wanted)}\) replicas 0 -> 2"),
            timeout_s=40,
        )

        code = process.wait(timeout=120)
        lines.rest(timeout_s=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    stderr = process.stderr.read() if process.stderr else ""
    output = "\n".join(lines.seen)
    print(f"\nprewarm up: {time.monotonic() - started:.0f} s wall in all\n{output}")
    assert code == 0, f"{output}\n{stderr}"
    assert "replayed 10m; stopping" in output
    assert "stopped: every process of the stack exited" in output
    assert "warning" not in output
    leftover = {name: pid for name, pid in stack["pids"].items() if _alive(pid)}
    assert not leftover, leftover
    listening = {name: port for name, port in stack["ports"].items() if port_open(port)}
    assert not listening, listening
    assert not (state / "stack.json").exists()
    # The dashboards' panels, drawn from the stack's Prometheus before it stopped.
    pages = sorted((state / "dashboards").rglob("index.html"))
    assert len(pages) > 1, output
    assert any("<polyline" in page.read_text(encoding="utf-8") for page in pages)
