"""Generate the chart's values.schema.json and README.md; tests/chart checks both are up to date.

Run with the repository's environment: ``.venv/bin/python charts/prewarm/generate.py``.

- values.schema.json: the chart's own values (written out below, strict: unknown keys are refused)
  plus, under ``config``, the JSON schema of prewarm's settings tree
  (``prewarm.settings.Settings.model_json_schema()``), so ``helm install`` refuses a bad setting
  before a daemon ever starts with it. Cross-field rules (validators) are checked only at start-up.
- README.md: an introduction plus one table row per key of values.yaml that carries a helm-docs
  style ``# --`` comment (the description may continue on the following ``#`` lines).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent
REPO_ROOT = CHART.parents[1]

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.\-/\"]+):(?:\s|$)")


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, **extra}


_STRING = {"type": "string"}
_BOOL = {"type": "boolean"}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_MAP = {"type": "object"}
_LIST = {"type": "array"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_RESOURCES = _object(
    {"requests": _MAP, "limits": _MAP, "claims": _LIST},
    description="A container's resources (requests/limits).",
)
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_ABS_PATH = {"type": "string", "pattern": r"^/.+"}
_MONITOR = _object({"enabled": _BOOL, "interval": _DURATION, "labels": _LABEL_MAP})

CHART_SCHEMA: dict[str, Any] = _object(
    {
        # helm passes "global" to every chart; accept it so strictness does not break umbrellas.
        "global": _MAP,
        "nameOverride": _STRING,
        "fullnameOverride": _STRING,
        "image": _object(
            {
                "repository": {"type": "string", "minLength": 1},
                "tag": _STRING,
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            }
        ),
        "imagePullSecrets": {"type": "array", "items": _object({"name": _STRING})},
        "catalog": {"type": "object"},
        "serviceAccount": _object({"create": _BOOL, "name": _STRING, "annotations": _STRING_MAP}),
        "rbac": _object(
            {
                "create": _BOOL,
                "keda": _BOOL,
                "clusterAPI": _BOOL,
                "karpenter": _BOOL,
                "prepullPodPolicy": _BOOL,
            }
        ),
        "placeholder": _object(
            {
                "createPriorityClass": _BOOL,
                "priorityClassName": {"type": "string", "minLength": 1},
                "priority": {
                    "type": "integer",
                    "maximum": -1,
                    "description": "Negative, so that every real pod preempts the placeholders; "
                    "not below expendablePodsPriorityCutoff (the chart fails otherwise).",
                },
                "expendablePodsPriorityCutoff": {
                    "type": "integer",
                    "maximum": -1,
                    "description": "The cluster autoscaler's --expendable-pods-priority-cutoff: "
                    "pending pods with a priority below it trigger no scale-up.",
                },
            }
        ),
        "config": {"$ref": "#/$defs/Settings"},
        "daemon": _object(
            {
                "replicas": {"type": "integer", "minimum": 1},
                "ports": _object({"http": _PORT, "grpc": _PORT}),
                "controlProbe": {"enum": ["grpc", "tcp", "none"]},
                "resources": _RESOURCES,
                "terminationGracePeriodSeconds": {"type": "integer", "minimum": 1},
                "extraEnv": _LIST,
                "extraVolumes": _LIST,
                "extraVolumeMounts": _LIST,
                "podAnnotations": _STRING_MAP,
                "nodeSelector": _STRING_MAP,
                "tolerations": _LIST,
                "affinity": _MAP,
                "priorityClassName": _STRING,
                "podDisruptionBudget": _object({"enabled": _BOOL}),
            }
        ),
        "controlTokens": _object({"enabled": _BOOL, "existingSecret": _STRING}),
        "agentToken": _object({"enabled": _BOOL, "existingSecret": _STRING}),
        "service": _object(
            {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "annotations": _STRING_MAP,
            }
        ),
        "agent": _object(
            {
                "enabled": _BOOL,
                "image": _object({"repository": _STRING, "tag": _STRING}),
                "port": _PORT,
                "metricsPort": {"anyOf": [_PORT, {"type": "null"}]},
                "nodeSelector": _STRING_MAP,
                "tolerations": _LIST,
                "affinity": _MAP,
                "runtimeClassName": _STRING,
                "nvidiaVisibleDevices": _STRING,
                "hostIPC": _BOOL,
                "diskCache": _object({"path": _ABS_PATH}),
                "sharedMemory": _object(
                    {
                        "type": {"enum": ["hostPath", "emptyDir"]},
                        "path": _ABS_PATH,
                        "sizeLimit": _STRING,
                    }
                ),
                "compileCache": _object({"path": {"type": "string", "pattern": r"^(/.+)?$"}}),
                "resources": _RESOURCES,
                "extraEnv": _LIST,
                "extraVolumes": _LIST,
                "extraVolumeMounts": _LIST,
                "podAnnotations": _STRING_MAP,
                "priorityClassName": _STRING,
                "terminationGracePeriodSeconds": {"type": "integer", "minimum": 1},
                "service": _object({"enabled": _BOOL}),
            }
        ),
        "handoff": _object(
            {
                "enabled": _BOOL,
                "image": _object({"repository": _STRING, "tag": _STRING}),
                "timeout": _DURATION,
                "leaseTTL": _DURATION,
                "renewEvery": _DURATION,
            }
        ),
        "monitoring": _object(
            {
                "serviceMonitor": _MONITOR,
                "podMonitor": _MONITOR,
                "prometheusRule": _object(
                    {
                        "enabled": _BOOL,
                        "labels": _LABEL_MAP,
                        "alertLabels": _LABEL_MAP,
                        "forecastErrorRatio": {"type": "number", "exclusiveMinimum": 0},
                        "underForecastRatio": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 1,
                        },
                        "for": _DURATION,
                    }
                ),
                "dashboards": _object(
                    {"enabled": _BOOL, "labels": _LABEL_MAP, "annotations": _STRING_MAP}
                ),
            }
        ),
        "networkPolicy": _object(
            {
                "enabled": _BOOL,
                "daemonFrom": _LIST,
                "agentFrom": _LIST,
                "agentEgressPorts": {"type": "array", "items": _PORT},
            }
        ),
        "containerSecurityContext": _MAP,
    },
    title="prewarm chart values",
)


def values_schema() -> dict[str, Any]:
    """The chart's schema with the settings tree's definitions at the root (``#/$defs/...``)."""
    sys.path.insert(0, str(REPO_ROOT))
    from prewarm.settings import Settings

    settings = Settings.model_json_schema()
    definitions = dict(settings.pop("$defs"))
    definitions["Settings"] = settings
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **CHART_SCHEMA,
        "$defs": definitions,
    }


def render_schema() -> str:
    """The exact committed text of values.schema.json."""
    return json.dumps(values_schema(), indent=2, sort_keys=True) + "\n"


def documented_keys(text: str) -> list[tuple[str, str]]:
    """``(dotted key, description)`` for every key of ``text`` (values.yaml) under a ``# --``."""
    rows: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    description: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            description = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#"):
            if description is not None:
                description.append(stripped.removeprefix("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if not stripped or stripped.startswith("-") or match is None:
            if stripped and not stripped.startswith("-"):
                description = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"].strip('"')))
        if description is not None:
            rows.append((".".join(key for _, key in stack), " ".join(description).strip()))
            description = None
    return rows


def _lookup(values: Any, dotted: str) -> Any:
    node = values
    for key in dotted.split("."):
        node = node[key]
    return node


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


INTRO = """\
# prewarm Helm chart

<!-- Generated by generate.py from values.yaml and its "# --" comments; do not edit by hand. -->

Predictive pre-warming for ML model serving on Kubernetes: the prewarm daemon (`prewarm run`),
which forecasts each model's demand from Prometheus and acts ahead of it, and the GPU agent
DaemonSet (`prewarm agent`), which holds model weights in a node's disk, host shared memory and GPU
memory ahead of the inference pods.

```sh
helm install prewarm charts/prewarm --namespace prewarm --create-namespace \\
  --set config.forecaster.prometheus.url=http://prometheus.monitoring.svc:9090
```

A new install runs in `advisory` mode: it publishes forecasts and plans and changes nothing. Turn
on acting with `--set config.daemon.mode=active`.

What it creates:

- the daemon Deployment (2 replicas; one leads through the Lease
  `config.daemon.leader_election.lease_name`), its ConfigMap of settings, Service (http 8080:
  `/healthz`, `/readyz`, `/metrics`; grpc 50071: control API and KEDA external scaler) and
  PodDisruptionBudget;
- least-privilege RBAC: `<fullname>-actuator` (what the actuator writes, including image
  pre-pull pods in the workloads' namespaces, and the pod listing the observer shares) and
  `<fullname>-daemon` (the Lease, the control API's ConfigMap and events to time image pulls),
  each proven sufficient and minimal against a real API server by the repository's tests (see
  docs/prepull.md for the pre-pull part);
- the GPU agent DaemonSet on nodes labelled `nvidia.com/gpu.present=true`, with its own
  ServiceAccount (no RBAC), hostPath mounts for the disk cache, the host shared-memory tier and the
  compile cache, `hostIPC` for CUDA IPC hand-off, and a node-local Service for inference pods;
- the negative PriorityClass of the capacity placeholder pods;
- the control API's tokens and the agents' token (Secrets) and two NetworkPolicies;
- optionally: ServiceMonitor / PodMonitor / PrometheusRule (need the Prometheus Operator's CRDs)
  and the Grafana dashboards ConfigMap (on by default, for the Grafana sidecar).

## Security

Defaults:

- **Control API and KEDA scaler** (grpc 50071): bearer tokens from the Secret
  `<fullname>-control-tokens` (keys `write` and `read`, random, kept across upgrades;
  `controlTokens`). The KEDA scaler needs a read credential too: a `tokenFromEnv` key in the
  trigger's metadata, or a TLS client certificate (docs/keda.md);
  `config.control.auth.keda_anonymous: true` turns that off explicitly.
- **GPU agents** (grpc 50061): a bearer token from the Secret `<fullname>-agent-token` (key
  `token`; `agentToken`), mounted into the agents and the daemon; an agent without a token refuses
  to start. Reflection is off (`config.agent.reflection`). Serving pods that run
  `prewarm handoff` need the same token (`--token-file`) and an `networkPolicy.agentFrom` entry.
- **NetworkPolicies** (`networkPolicy.enabled`, on): the daemon accepts http and grpc only from
  this release's pods and `networkPolicy.daemonFrom` (e.g. Prometheus, KEDA, your CLI's
  namespace); the agents accept grpc only from the daemon and `networkPolicy.agentFrom`, their
  metrics port only from the daemon's peers, and connect only to DNS and the TCP ports of
  `networkPolicy.agentEgressPorts` (443 and 80; add e.g. 9000 for a MinIO endpoint). The daemon's
  egress is not restricted (the API server's address is not portable).

Rotating a token: write a new value into the Secret (`kubectl create secret generic ...
--dry-run=client -o yaml | kubectl apply -f -`, or your secret manager). The agents and the
daemon re-read the mounted file, which the kubelet refreshes within about a minute; rotate the
agents' token in one step (both sides read the same Secret). Control API clients pick up the new
value from their `--token-file` or `PREWARM_TOKEN`; the daemon reads control tokens at start-up,
so restart it
(`kubectl rollout restart deployment/<fullname>`) after rotating `<fullname>-control-tokens`.

`values.schema.json` holds, under `config`, the schema of the daemon's whole settings tree, so a
misspelt or out-of-range setting is refused by `helm install` rather than at start-up.

## Values

| Key | Type | Default | Description |
|-----|------|---------|-------------|
"""


def render_readme() -> str:
    """The exact committed text of README.md."""
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    lines = [INTRO.rstrip("\n")]
    for key, description in documented_keys(text):
        value = _lookup(values, key)
        default = json.dumps(value, separators=(",", ":"))
        lines.append(
            f"| `{key}` | {_type_name(value)} | `{_cell(default)}` | {_cell(description)} |"
        )
    return "\n".join(lines) + "\n"


OUTPUTS = {"values.schema.json": render_schema, "README.md": render_readme}


def main() -> int:
    """Write every generated file that changed; print what was written."""
    for name, render in OUTPUTS.items():
        path = CHART / name
        text = render()
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
