"""The chart, rendered by the real helm: lint, what each values file produces, what bad values
files are refused with, that the rendered settings load with ``prewarm.settings.load_settings``,
that alert rules pass ``promtool``, and that the generated and copied files are up to date."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from actuator.config import ActuatorConfig
from prewarm.daemon.metrics import DaemonMetrics
from prewarm.settings import load_settings
from tests.chart.conftest import (
    BAD_VALUES,
    GOOD_VALUES,
    VALUES,
    container,
    find,
    kinds,
    pod_environment,
)
from tests.harness.helm import CHART, Obj, helm, render, values_args
from tests.harness.k8s import REPO_ROOT, require_binary

pytestmark = [pytest.mark.helm]

DEFAULT = VALUES / "default.yaml"
ACTIVE = VALUES / "active.yaml"
MONITORING = VALUES / "monitoring.yaml"

CORE_KINDS = [
    "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "ConfigMap",
    "Deployment", "PriorityClass", "Role", "Role", "RoleBinding", "RoleBinding", "Service",
    "ServiceAccount", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
]  # fmt: skip
CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "PriorityClass", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}  # fmt: skip
AGENT_KINDS = ["DaemonSet", "Service", "ServiceAccount"]
POLICIES = ["NetworkPolicy", "NetworkPolicy"]  # on by default: the daemon's and the agents'
SECRETS = ["Secret", "Secret"]  # the control API's tokens and the agents' token
EXPECTED_KINDS = {
    "default.yaml": [*CORE_KINDS, *AGENT_KINDS, "ConfigMap", *POLICIES, "PodDisruptionBudget",
                     *SECRETS],
    "active.yaml": [*CORE_KINDS, *AGENT_KINDS, "ConfigMap", *POLICIES, "PodDisruptionBudget"],
    "agent-off.yaml": [*CORE_KINDS, "NetworkPolicy", "Secret"],
    "monitoring.yaml": [
        *CORE_KINDS,
        *AGENT_KINDS,
        "ConfigMap",
        *POLICIES,
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
        *SECRETS,
        "ServiceMonitor",
    ],
    "networkpolicy.yaml": [
        *CORE_KINDS,
        *AGENT_KINDS,
        "ConfigMap",
        *POLICIES,
        "PodDisruptionBudget",
        *SECRETS,
    ],
}  # fmt: skip

# What each bad values file must be refused with (helm's schema message, or the chart's own).
BAD_MESSAGES = {
    "negative-replicas.yaml": "at '/daemon/replicas': minimum: got -1, want 1",
    "bad-mode.yaml": "at '/config/daemon/mode': value must be one of 'advisory', 'active'",
    "unknown-key.yaml": "additional properties 'replicaCount' not allowed",
    "wrong-type.yaml": "at '/agent/hostIPC': got string, want boolean",
    "settings-typo.yaml": "additional properties 'horizon_seconds' not allowed",
    "settings-range.yaml": (
        "at '/config/forecaster/planning_quantile': exclusiveMaximum: got 1.5, want 1"
    ),
    "chart-owned-key.yaml": "config.actuator.namespace is set by the chart to prewarm; remove it "
    "from config and set the release namespace (helm --namespace) instead",
    "one-leaderless-pair.yaml": "daemon.replicas > 1 needs config.daemon.leader_election.enabled",
}


def ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def test_every_values_file_is_covered() -> None:
    assert sorted(EXPECTED_KINDS) == ids(GOOD_VALUES)
    assert sorted(BAD_MESSAGES) == ids(BAD_VALUES)


@pytest.mark.parametrize("values", GOOD_VALUES, ids=ids(GOOD_VALUES))
def test_helm_lint_passes_strict(values: Path) -> None:
    linted = helm("lint", "--strict", str(CHART), "--namespace", "prewarm", *values_args(values))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in linted.stdout


@pytest.mark.parametrize("values", GOOD_VALUES, ids=ids(GOOD_VALUES))
def test_helm_template_renders_the_expected_objects(values: Path) -> None:
    docs = render(values, release="prewarm", namespace="prewarm")

    assert kinds(docs) == sorted(EXPECTED_KINDS[values.name])
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == "prewarm", doc["metadata"]["name"]
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "prewarm", doc["metadata"]["name"]


# Refused by the chart's templates (`fail`), not by the schema: `helm template` and `helm install`
# stop with the message, but `helm lint` deliberately downgrades a template `fail` to [INFO].
TEMPLATE_CHECKS = {"chart-owned-key.yaml", "one-leaderless-pair.yaml"}


@pytest.mark.parametrize("values", BAD_VALUES, ids=ids(BAD_VALUES))
def test_bad_values_are_refused_with_a_clear_message(values: Path) -> None:
    expected = BAD_MESSAGES[values.name]
    rendered = helm(
        "template", "prewarm", str(CHART), "--namespace", "prewarm", *values_args(values)
    )
    assert rendered.returncode != 0, f"helm template accepted {values.name}"
    assert expected in " ".join(rendered.stderr.split()), rendered.stderr

    linted = helm("lint", str(CHART), "--namespace", "prewarm", *values_args(values))
    output = " ".join((linted.stdout + linted.stderr).split())
    if values.name in TEMPLATE_CHECKS:
        assert f"[INFO] Fail: {expected}" in output
    else:
        assert linted.returncode != 0, f"helm lint accepted {values.name}"
        assert "1 chart(s) failed" in output
        assert expected in output


# -- the rendered settings ------------------------------------------------------------------------


def load_rendered_settings(
    docs: list[Obj], kind: str, container_name: str, tmp_path: Path, monkeypatch: Any
) -> Any:
    """Load the settings exactly as the rendered container would: its ConfigMap file at the path
    PREWARM_CONFIG names, with the container's environment (PREWARM_ variables included)."""
    workload = find(docs, kind)
    spec = container(workload, container_name)
    env = pod_environment(spec)
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "config")
    config_path = Path(env["PREWARM_CONFIG"])
    assert config_path.parent == Path(mount["mountPath"])
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    source = next(v for v in volumes if v["name"] == "config")["configMap"]
    (item,) = source["items"]
    assert item["path"] == config_path.name
    config_map = find(docs, "ConfigMap", source["name"])
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][item["key"]], encoding="utf-8")
    for name in [name for name in os.environ if name.startswith("PREWARM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(local)


@pytest.mark.parametrize("values", GOOD_VALUES, ids=ids(GOOD_VALUES))
def test_rendered_daemon_settings_load_without_error(
    values: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(values, namespace="ml-serving")
    settings = load_rendered_settings(docs, "Deployment", "daemon", tmp_path, monkeypatch)
    raw = yaml.safe_load(values.read_text(encoding="utf-8")) or {}
    daemon_values = raw.get("daemon", {})

    assert settings.actuator.namespace == "ml-serving"
    assert settings.control.namespace == "ml-serving"
    expected_mode = raw.get("config", {}).get("daemon", {}).get("mode", "advisory")
    assert settings.daemon.mode == expected_mode
    http = daemon_values.get("ports", {}).get("http", 8080)
    grpc = daemon_values.get("ports", {}).get("grpc", 50071)
    assert settings.daemon.http_port == http
    assert settings.control.listen_address == f"0.0.0.0:{grpc}"
    assert settings.control.advertise_address == f"10.1.2.3:{grpc}"
    agent_port = raw.get("agent", {}).get("port", 50061)
    assert settings.actuator.agent.port == agent_port
    assert settings.actuator.agent.label_selector == (
        "app.kubernetes.io/name=prewarm-gpu-agent,app.kubernetes.io/instance=prewarm"
    )
    assert settings.actuator.placeholder.priority_class == "prewarm-placeholder"


def test_daemon_and_agents_log_json_lines_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production logs go to a collector: JSON with every field (config.logging.json_format).
    docs = render(DEFAULT)
    for kind, name in (("Deployment", "daemon"), ("DaemonSet", "agent")):
        settings = load_rendered_settings(docs, kind, name, tmp_path, monkeypatch)
        assert settings.logging.json_format is True, kind
        assert settings.logging.level == "info", kind


@pytest.mark.parametrize(
    "values", [v for v in GOOD_VALUES if v.name != "agent-off.yaml"], ids=lambda v: v.name
)
def test_rendered_agent_settings_load_without_error(
    values: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(values)
    settings = load_rendered_settings(docs, "DaemonSet", "agent", tmp_path, monkeypatch)
    daemonset = find(docs, "DaemonSet")
    spec = container(daemonset, "agent")
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}

    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert settings.agent.listen == f"0.0.0.0:{ports['grpc']}"
    assert settings.agent.metrics_port == ports["metrics"]
    assert mounts["disk-cache"] == settings.agent.cache_dir
    assert mounts["shared-memory"] == settings.agent.shm_dir
    assert mounts["compile-cache"] in settings.agent.allowed_install_roots


def test_active_values_turn_on_active_mode_and_tls_probe(tmp_path: Path, monkeypatch: Any) -> None:
    docs = render(ACTIVE)
    settings = load_rendered_settings(docs, "Deployment", "daemon", tmp_path, monkeypatch)
    daemon = container(find(docs, "Deployment"), "daemon")

    assert settings.daemon.mode == "active"
    assert settings.daemon.budget.max_gpu_bytes == 214748364800  # large ints survive helm
    assert settings.planner.gpu_memory_budget_bytes == 1099511627776
    assert settings.actuator.agent.token is not None  # the agent token from a Secret, via env
    # With TLS on the control port the kubelet's plaintext gRPC probe cannot work: TCP instead.
    assert daemon["startupProbe"]["tcpSocket"] == {"port": "grpc"}
    assert find(docs, "Deployment")["spec"]["replicas"] == 3


def test_a_setting_the_chart_owns_cannot_be_contradicted() -> None:
    result = helm(
        "template", "r", str(CHART), "--namespace", "ns", "--set", "config.agent.listen=0.0.0.0:1"
    )
    assert result.returncode != 0
    assert "config.agent.listen is set by the chart to 0.0.0.0:50061" in result.stderr
    assert "set agent.port instead" in result.stderr
    # The same value as the chart's is fine.
    same = helm(
        "template", "r", str(CHART), "--namespace", "ns", "--set", "config.actuator.namespace=ns"
    )
    assert same.returncode == 0, same.stderr


# -- the daemon -----------------------------------------------------------------------------------


RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_daemon_deployment() -> None:
    docs = render(DEFAULT)
    deployment = find(docs, "Deployment", "prewarm")
    pod = deployment["spec"]["template"]["spec"]
    daemon = container(deployment, "daemon")
    env = {item["name"]: item for item in daemon["env"]}

    assert deployment["spec"]["replicas"] == 2
    assert daemon["image"] == "ghcr.io/prewarm/prewarm:0.1.0"
    assert daemon["command"] == ["prewarm"]
    assert daemon["args"] == ["run"]
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["PREWARM_CONFIG"]["value"] == "/etc/prewarm/prewarm.yaml"
    assert {p["name"]: p["containerPort"] for p in daemon["ports"]} == {"http": 8080, "grpc": 50071}
    assert daemon["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert daemon["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert daemon["startupProbe"]["grpc"] == {"port": 50071}
    assert daemon["resources"]["requests"]
    assert daemon["resources"]["limits"]["memory"]
    assert daemon["securityContext"] == RESTRICTED_CONTAINER
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == "prewarm"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert {"name": "tmp", "mountPath": "/tmp"} in daemon["volumeMounts"]
    for field in ("hostIPC", "hostNetwork", "hostPID"):
        assert field not in pod
    # Annotation changes with the settings, so a config change rolls the pods.
    other = find(render(ACTIVE), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert (
        other["checksum/config"]
        != deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    )
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_daemon_services_select_the_daemon_pods() -> None:
    docs = render(DEFAULT)
    deployment = find(docs, "Deployment")
    service = find(docs, "Service", "prewarm")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8080, "grpc": 50071}
    assert next(p for p in service["spec"]["ports"] if p["name"] == "grpc")["appProtocol"] == "grpc"


# -- RBAC -----------------------------------------------------------------------------------------


def rules_of(docs: list[Obj], kind: str, name: str) -> list[Obj]:
    rules: list[Obj] = find(docs, kind, name)["rules"]
    return rules


def test_daemon_rbac_is_separate_from_the_actuators_and_least_privilege() -> None:
    docs = render(ACTIVE, release="rel", namespace="ml")
    # The actuator's objects keep their names (tests/actuator/test_rbac.py proves their rules).
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        find(docs, kind, "rel-prewarm-actuator")
    # Pods are listed with the actuator's ClusterRole (its image pre-pull pods live in the
    # workloads' namespaces); a second grant would make one of them superfluous.
    assert rules_of(docs, "ClusterRole", "rel-prewarm-daemon") == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},  # image pulls
    ]
    assert {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["list", "create", "patch", "delete"],
    } in rules_of(docs, "ClusterRole", "rel-prewarm-actuator")
    assert rules_of(docs, "Role", "rel-prewarm-daemon") == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["prewarm-prod-leader"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["prewarm-prod-control"], "verbs": ["get", "update"]},
    ]  # fmt: skip
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        binding = find(docs, kind, "rel-prewarm-daemon")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rel-prewarm", "namespace": "ml"}
        ]
    # No wildcard and no secrets anywhere in the chart's rules.
    for doc in docs:
        for rule in doc.get("rules") or []:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert "secrets" not in rule["resources"]


def test_agent_service_account_is_bound_to_nothing() -> None:
    docs = render(DEFAULT)
    account = find(docs, "ServiceAccount", "prewarm-gpu-agent")

    assert account["automountServiceAccountToken"] is False
    for doc in docs:
        for subject in doc.get("subjects") or []:
            assert subject["name"] != "prewarm-gpu-agent"


# -- the GPU agent --------------------------------------------------------------------------------


def test_agent_daemonset() -> None:
    docs = render(DEFAULT)
    daemonset = find(docs, "DaemonSet", "prewarm-gpu-agent")
    pod = daemonset["spec"]["template"]["spec"]
    agent = container(daemonset, "agent")
    env = {item["name"]: item.get("value") for item in agent["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    assert agent["image"] == "ghcr.io/prewarm/prewarm:0.1.0-agent"
    assert agent["command"] == ["prewarm"]
    assert agent["args"] == ["agent"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["hostIPC"] is True  # gpu_agent/client.py: CUDA IPC hand-off needs it
    assert "hostPID" not in pod
    assert "hostNetwork" not in pod
    assert pod["serviceAccountName"] == "prewarm-gpu-agent"
    assert pod["automountServiceAccountToken"] is False
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert agent["securityContext"] == RESTRICTED_CONTAINER
    assert volumes["disk-cache"]["hostPath"] == {
        "path": "/var/cache/prewarm",
        "type": "DirectoryOrCreate",
    }
    assert volumes["shared-memory"]["hostPath"] == {
        "path": "/dev/shm/prewarm",
        "type": "DirectoryOrCreate",
    }
    assert "emptyDir" in volumes["tmp"]
    # Its only other container is the init step handing the host directories to uid 65532.
    (init,) = pod["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert init["command"] == [
        "chown",
        "65532:65532",
        "/var/cache/prewarm",
        "/dev/shm/prewarm",
        "/var/cache/prewarm-compile",
    ]
    for spec in [agent, init]:
        assert "privileged" not in spec["securityContext"]
    # gRPC health at start-up, then the HTTP probes of its metrics port (gpu_agent/server.py).
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == {
        "grpc": 50061,
        "metrics": 9400,
    }
    assert agent["startupProbe"]["grpc"] == {"port": 50061}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_agent_without_metrics_port_is_probed_over_grpc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(DEFAULT, sets=["agent.metricsPort=null"])
    agent = container(find(docs, "DaemonSet"), "agent")
    settings = load_rendered_settings(docs, "DaemonSet", "agent", tmp_path, monkeypatch)

    assert [p["name"] for p in agent["ports"]] == ["grpc"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert agent[probe]["grpc"] == {"port": 50061}
    assert settings.agent.metrics_port == 9400  # the agent's own default: the chart sets nothing
    refused = helm(
        "template", "r", str(CHART), "--set", "agent.metricsPort=null",
        "--set", "monitoring.podMonitor.enabled=true",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "monitoring.podMonitor scrapes the GPU agents: it needs" in refused.stderr


def test_agent_pods_are_the_ones_the_actuator_looks_for() -> None:
    docs = render(DEFAULT, release="gpu")
    daemonset = find(docs, "DaemonSet")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    config = yaml.safe_load(find(docs, "ConfigMap", "gpu-prewarm-config")["data"]["prewarm.yaml"])
    actuator = ActuatorConfig.model_validate(config["actuator"])

    for requirement in actuator.agent.label_selector.split(","):
        key, _, value = requirement.partition("=")
        assert labels[key] == value
    assert daemonset["metadata"]["namespace"] == actuator.namespace  # the actuator lists pods there
    service = find(docs, "Service", "gpu-prewarm-gpu-agent")
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert service["spec"]["selector"].items() <= labels.items()


def test_agent_emptydir_host_tier_and_runtime_class() -> None:
    daemonset = find(render(ACTIVE), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}

    assert volumes["shared-memory"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert pod["runtimeClassName"] == "nvidia"
    assert [p["containerPort"] for p in container(daemonset, "agent")["ports"]] == [50071, 9500]


# -- monitoring -----------------------------------------------------------------------------------


def daemon_metric_names() -> set[str]:
    names: set[str] = set()
    for family in DaemonMetrics().registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
    return names


def dashboard_agent_metric_names() -> set[str]:
    spec = importlib.util.spec_from_file_location(
        "dashboards_build", REPO_ROOT / "dashboards" / "build.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    expressions = [query.expr for panel in module.AGENT_PANELS for query in panel.queries]
    return {name for expr in expressions for name in re.findall(r"prewarm_agent_\w+", expr)}


def test_monitoring_objects(tmp_path: Path) -> None:
    docs = render(MONITORING)
    service = find(docs, "Service", "prewarm")
    service_monitor = find(docs, "ServiceMonitor")
    pod_monitor = find(docs, "PodMonitor")
    agent_pods = find(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]

    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        service_monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
    )
    assert service_monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s"}
    ]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= agent_pods.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    agent_ports = container(find(docs, "DaemonSet"), "agent")["ports"]
    assert "metrics" in [p["name"] for p in agent_ports]


def test_prometheus_rules_pass_promtool_and_use_real_metric_names(tmp_path: Path) -> None:
    rule = find(render(MONITORING, namespace="ml"), "PrometheusRule")
    groups = rule["spec"]["groups"]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    promtool = require_binary("PREWARM_PROMTOOL_BIN")
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout

    alerts = {r["alert"]: r for group in groups for r in group["rules"] if "alert" in r}
    assert set(alerts) >= {
        "PrewarmForecastErrorHigh", "PrewarmUnderForecastHigh", "PrewarmActionsFailing",
        "PrewarmAgentOutOfMemory", "PrewarmNoLeader",
    }  # fmt: skip
    assert alerts["PrewarmForecastErrorHigh"]["expr"].endswith("> 0.8")
    assert alerts["PrewarmForecastErrorHigh"]["labels"] == {
        "severity": "page",
        "team": "ml-platform",
    }
    assert alerts["PrewarmForecastErrorHigh"]["for"] == "10m"
    assert 'result="error"' in alerts["PrewarmActionsFailing"]["expr"]
    assert "{{ $labels.model }}" in alerts["PrewarmForecastErrorHigh"]["annotations"]["summary"]
    recorded = {r["record"] for group in groups for r in group["rules"] if "record" in r}
    known = daemon_metric_names() | dashboard_agent_metric_names()
    for group in groups:
        for item in group["rules"]:
            used = set(re.findall(r"\bprewarm_\w+", item["expr"]))
            assert used <= known, f"{item.get('alert') or item.get('record')}: {used - known}"
            for name in re.findall(r"prewarm:[\w:]+", item["expr"]):
                assert name in recorded
            assert 'namespace="ml"' in item["expr"]
    assert {"prewarm_forecast_error_ratio", "prewarm_under_forecast_ratio", "prewarm_is_leader",
            "prewarm_actions_total"} <= daemon_metric_names()  # fmt: skip


def test_dashboards_configmap_carries_the_committed_dashboards() -> None:
    config_map = find(render(DEFAULT), "ConfigMap", "prewarm-dashboards")
    committed = {
        path.name: path.read_text(encoding="utf-8")
        for path in (REPO_ROOT / "dashboards").glob("*.json")
    }

    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert committed
    assert config_map["data"] == committed
    for text in config_map["data"].values():
        assert json.loads(text)["uid"]


def test_chart_copies_of_the_dashboards_are_identical() -> None:
    """helm reads only files inside the chart, so dashboards/*.json is copied there; keep in step
    with ``cp dashboards/*.json charts/prewarm/dashboards/``."""
    source = {p.name: p.read_bytes() for p in (REPO_ROOT / "dashboards").glob("*.json")}
    copies = {p.name: p.read_bytes() for p in (CHART / "dashboards").glob("*.json")}

    assert copies == source


def test_network_policies() -> None:
    docs = render(VALUES / "networkpolicy.yaml")
    daemon = find(docs, "NetworkPolicy", "prewarm")
    agent = find(docs, "NetworkPolicy", "prewarm-gpu-agent")
    daemon_pods = find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    agent_pods = find(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]

    assert daemon["spec"]["podSelector"]["matchLabels"].items() <= daemon_pods.items()
    assert agent["spec"]["podSelector"]["matchLabels"].items() <= agent_pods.items()
    (ingress,) = daemon["spec"]["ingress"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in ingress["from"]
    assert [p["port"] for p in ingress["ports"]] == ["http", "grpc"]
    agent_ingress, agent_metrics = agent["spec"]["ingress"]
    assert agent_ingress["from"][0]["podSelector"]["matchLabels"].items() <= daemon_pods.items()
    assert [p["port"] for p in agent_ingress["ports"]] == ["grpc"]
    assert [p["port"] for p in agent_metrics["ports"]] == ["metrics"]
    assert agent_metrics["from"][1:] == ingress["from"][1:]  # Prometheus, as for the daemon
    (egress,) = agent["spec"]["egress"]
    assert [p["port"] for p in egress["ports"]] == [53, 53, 443, 80]
    # On by default (secure by default); egress ports follow networkPolicy.agentEgressPorts.
    assert kinds(render(DEFAULT)).count("NetworkPolicy") == 2
    minio = render(DEFAULT, sets=["networkPolicy.agentEgressPorts={443,9000}"])
    (egress,) = find(minio, "NetworkPolicy", "prewarm-gpu-agent")["spec"]["egress"]
    assert [p["port"] for p in egress["ports"]] == [53, 53, 443, 9000]
    assert "NetworkPolicy" not in kinds(render(DEFAULT, sets=["networkPolicy.enabled=false"]))


def test_agents_require_a_token_from_a_secret_the_daemon_sends() -> None:
    docs = render(DEFAULT)
    secret = find(docs, "Secret", "prewarm-agent-token")
    assert sorted(secret["data"]) == ["token"]
    agent_config = yaml.safe_load(find(docs, "ConfigMap", "prewarm-config")["data"]["agent.yaml"])
    daemon_config = yaml.safe_load(
        find(docs, "ConfigMap", "prewarm-config")["data"]["prewarm.yaml"]
    )
    path = "/etc/prewarm-agent-token/token"
    assert agent_config["agent"]["auth"] == {"token_file": path}  # mode: token is the default
    assert daemon_config["actuator"]["agent"]["token_file"] == path
    for kind in ("DaemonSet", "Deployment"):
        pod = find(docs, kind)["spec"]["template"]["spec"]
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts") or []]
        assert {"name": "agent-token", "mountPath": "/etc/prewarm-agent-token",
                "readOnly": True} in mounts  # fmt: skip
        volume = next(v for v in pod["volumes"] if v["name"] == "agent-token")
        assert volume["secret"]["secretName"] == "prewarm-agent-token"
    # An existing Secret replaces the generated one; a token the user passes turns it off.
    existing = render(DEFAULT, sets=["agentToken.existingSecret=theirs"])
    assert "prewarm-agent-token" not in [d["metadata"]["name"] for d in existing]
    volumes = find(existing, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "theirs", "defaultMode": 288} in [v.get("secret") for v in volumes]
    assert "prewarm-agent-token" not in [d["metadata"]["name"] for d in render(ACTIVE)]


# -- generated files ------------------------------------------------------------------------------


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("chart_generate", CHART / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_readme_and_schema_are_up_to_date() -> None:
    generator = load_generator()
    for name, render_file in generator.OUTPUTS.items():
        committed = (CHART / name).read_text(encoding="utf-8")
        assert committed == render_file(), (
            f"charts/prewarm/{name} is stale: run .venv/bin/python charts/prewarm/generate.py"
        )


def test_readme_documents_every_leaf_value() -> None:
    generator = load_generator()
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    documented = {key for key, _ in generator.documented_keys(text)}
    values = yaml.safe_load(text)

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node and prefix not in documented:
            return [
                leaf
                for key, value in node.items()
                for leaf in leaves(value, f"{prefix}.{key}".lstrip("."))
            ]
        return [prefix]

    missing = [key for key in leaves(values, "") if key not in documented]
    assert missing == []
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert "| `agent.hostIPC` | bool | `true` |" in readme


def test_control_api_tokens_come_from_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(DEFAULT)
    settings = load_rendered_settings(docs, "Deployment", "daemon", tmp_path, monkeypatch)
    deployment = find(docs, "Deployment")
    daemon = container(deployment, "daemon")
    mount = next(m for m in daemon["volumeMounts"] if m["name"] == "control-tokens")
    volume = next(
        v
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "control-tokens"
    )
    secret = find(docs, "Secret", "prewarm-control-tokens")

    assert settings.control.auth.mode == "token"
    assert [(t.name, t.scope.value, str(t.file)) for t in settings.control.auth.tokens] == [
        ("admin", "write", f"{mount['mountPath']}/write"),
        ("reader", "read", f"{mount['mountPath']}/read"),
    ]
    assert volume["secret"]["secretName"] == "prewarm-control-tokens"
    assert sorted(secret["data"]) == ["read", "write"]
    # Tokens the user configures are left alone; an existing Secret replaces the generated one.
    assert "Secret" not in kinds(render(ACTIVE))
    existing = render(DEFAULT, sets=["controlTokens.existingSecret=mine"])
    assert "prewarm-control-tokens" not in [d["metadata"]["name"] for d in existing]
    volumes = find(existing, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "mine", "defaultMode": 288} in [v.get("secret") for v in volumes]
