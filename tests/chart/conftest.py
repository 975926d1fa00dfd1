"""Helpers of the chart tests: the values files, finding rendered objects, and the pod environment
a rendered container would get (for validating the rendered settings). Rendering itself (the real
helm binary) is in :mod:`tests.harness.helm`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from tests.harness.helm import CHART, Obj

VALUES = Path(__file__).with_name("values")
GOOD_VALUES = sorted(VALUES.glob("*.yaml"))
BAD_VALUES = sorted((VALUES / "bad").glob("*.yaml"))


def find(docs: Sequence[Obj], kind: str, name: str | None = None) -> Obj:
    """The one rendered object of ``kind`` (and ``name``)."""
    found = [
        doc for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]  # fmt: skip
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered"
    return found[0]


def kinds(docs: Sequence[Obj]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def container(workload: Obj, name: str) -> Obj:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


_REFERENCE = re.compile(r"\$\((\w+)\)")


def pod_environment(
    spec_container: Obj, *, secrets: Mapping[str, str] | None = None, pod_ip: str = "10.1.2.3"
) -> dict[str, str]:
    """The environment the kubelet would give ``spec_container``: plain values, downward-API fields
    (pod IP and names made up here), secret references resolved from ``secrets`` (``name/key``
    -> value; a made-up value when absent, as a real Secret would supply one), and ``$(VAR)``
    references expanded as the kubelet does."""
    env: dict[str, str] = {}
    fields = {"status.podIP": pod_ip, "metadata.name": "pod-0", "spec.nodeName": "node-0"}
    for item in spec_container.get("env") or []:
        if "value" in item:
            value = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), str(item["value"]))
        elif "fieldRef" in item.get("valueFrom", {}):
            value = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            value = (secrets or {}).get(f"{ref['name']}/{ref['key']}", f"secret-{ref['name']}")
        else:
            raise AssertionError(f"unexpected env source {item}")
        env[item["name"]] = value
    return env


def chart_yaml() -> Obj:
    data: Obj = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return data
