"""The chart exposes the pre-pull helper for a private registry (issue 19), rendered by real helm.

``config.actuator.prepull.helper_image`` and ``.helper_pull_secrets`` are set as a user would set
them; the daemon's rendered settings load with them and the pre-pull pods built from those settings
use that image and Secret. A value of the wrong shape is refused at install time by the chart's
values.schema.json (generated from the settings models). The chart's RBAC grants what the pods in
the workloads' namespaces need (proven on a real apiserver in tests/actuator/test_rbac.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from actuator.config import PrepullConfig
from actuator.prepull import ImagePrepuller, PullContext
from common.ids import NodeName, PoolName
from planner.actions import ImagePrepull
from tests.chart.test_render import load_rendered_settings
from tests.harness.helm import CHART, helm, render

pytestmark = [pytest.mark.helm, pytest.mark.acceptance_fleet]

MIRROR = "registry.corp.example:5000/mirror/busybox:1.37-musl"


def test_helper_image_and_its_pull_secret_reach_the_pods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(
        namespace="ml-serving",
        sets=[
            f"config.actuator.prepull.helper_image={MIRROR}",
            "config.actuator.prepull.helper_pull_secrets={mirror-cred}",
            "config.actuator.prepull.run_as_user=1001",
        ],
    )
    settings = load_rendered_settings(docs, "Deployment", "daemon", tmp_path, monkeypatch)
    prepull = settings.actuator.prepull

    assert prepull.helper_image == MIRROR
    assert prepull.helper_pull_secrets == ["mirror-cred"]
    assert prepull.run_as_user == 1001

    puller = ImagePrepuller(kube=None, config=settings.actuator)  # type: ignore[arg-type]
    action = ImagePrepull(PoolName("gpu"), "registry.corp.example:5000/llm:v3", 2e9, "r", 1.0)
    context = PullContext("serving", ("model-cred", "mirror-cred"))
    pod = puller.pod_manifest(action, NodeName("n1"), context=context)
    assert pod["metadata"]["namespace"] == "serving"
    assert pod["spec"]["initContainers"][0]["image"] == MIRROR
    assert pod["spec"]["imagePullSecrets"] == [{"name": "model-cred"}, {"name": "mirror-cred"}]
    assert pod["spec"]["securityContext"]["runAsUser"] == 1001
    # Without a workload: prewarm's namespace, the helper's Secret only.
    default = puller.pod_manifest(action, NodeName("n1"))
    assert default["metadata"]["namespace"] == "ml-serving"
    assert default["spec"]["imagePullSecrets"] == [{"name": "mirror-cred"}]


@pytest.mark.parametrize(
    "value",
    [
        "config.actuator.prepull.helper_pull_secrets=mirror-cred",  # a string, not a list
        "config.actuator.prepull.run_as_user=0",  # root: refused by the settings' schema
        "config.actuator.prepull.helper_registry=x",  # no such key
    ],
)
def test_bad_prepull_values_are_refused_at_install_time(value: str) -> None:
    result = helm("template", "prewarm", str(CHART), "--set", value)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"helper_pull_secrets": ["Mirror_Cred"]}, "is not a Secret name"),
        ({"helper_pull_secrets": ["ok", "-bad"]}, "is not a Secret name"),
        ({"run_as_user": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_prepull_settings_say_what_to_fix(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        PrepullConfig.model_validate(settings)
    assert PrepullConfig(helper_pull_secrets=["mirror-cred", "a.b"]).helper_pull_secrets == [
        "mirror-cred",
        "a.b",
    ]
