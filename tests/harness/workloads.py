"""What a user's cluster holds before prewarm touches it: serving Deployments, pods, HPAs, KEDA
ScaledObjects and Cluster API MachineDeployments, as manifests and as objects applied on a real
apiserver by their usual owners (``kubectl``, ``cluster-api``).

Must not: apply anything as prewarm (the tests check what prewarm itself writes), or wait for a
controller: the harness runs none, so a Deployment is stored and creates no pods.
"""

from __future__ import annotations

from typing import Any

from actuator.kube import DEPLOYMENTS, HPAS, PODS, SCALED_OBJECTS, KubeClient, Obj

SERVING_IMAGE = "vllm/vllm-openai:v0.9"


def deployment_body(
    name: str,
    *,
    namespace: str | None = None,
    replicas: int = 1,
    image: str = SERVING_IMAGE,
    container: str = "server",
) -> Obj:
    """A serving Deployment's manifest: one container, pods labelled ``app: <name>``."""
    labels = {"app": name}
    metadata: Obj = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": container, "image": image}]},
            },
        },
    }


def pod_body(
    name: str,
    *,
    namespace: str | None = None,
    image: str,
    container: str = "c",
    node: str | None = None,
    labels: dict[str, str] | None = None,
) -> Obj:
    """A one-container Pod's manifest; with ``node`` it is bound there (kwok then runs it)."""
    metadata: Obj = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels is not None:
        metadata["labels"] = labels
    spec: Obj = {}
    if node is not None:
        spec["nodeName"] = node
    spec["containers"] = [{"name": container, "image": image}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def apply_pod(kube: KubeClient, body: Obj, *, field_manager: str = "test") -> str:
    """Apply the Pod ``body`` (which names its namespace); returns its path."""
    path = PODS.path(body["metadata"]["namespace"], body["metadata"]["name"])
    return _apply(kube, path, body, field_manager)


def deployment(kube: KubeClient, namespace: str, name: str = "llama", replicas: int = 1) -> str:
    """A user's serving Deployment (applied by 'kubectl', not prewarm); returns its path."""
    body = deployment_body(name, namespace=namespace, replicas=replicas)
    return _apply(kube, DEPLOYMENTS.path(namespace, name), body, "kubectl")


def hpa(kube: KubeClient, namespace: str, target: str, *, min_replicas: int | None = 2) -> str:
    """An HPA ``<target>-hpa`` on Deployment ``target`` (CPU, max 10); returns its path.
    ``min_replicas=None`` leaves minReplicas out (the apiserver then defaults it to 1)."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "maxReplicas": 10,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80},
                },
            }
        ],
    }
    if min_replicas is not None:
        spec["minReplicas"] = min_replicas
    body = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"{target}-hpa", "namespace": namespace},
        "spec": spec,
    }
    return _apply(kube, HPAS.path(namespace, f"{target}-hpa"), body, "kubectl")


def scaled_object(kube: KubeClient, namespace: str, target: str, *, minimum: int | None) -> str:
    """A KEDA ScaledObject ``<target>-so`` on ``target`` (max 20); returns its path.
    ``minimum=None`` leaves minReplicaCount unset. Needs the ScaledObject CRD installed."""
    spec: dict[str, Any] = {"scaleTargetRef": {"name": target}, "maxReplicaCount": 20}
    if minimum is not None:
        spec["minReplicaCount"] = minimum
    body = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": f"{target}-so", "namespace": namespace},
        "spec": spec,
    }
    return _apply(kube, SCALED_OBJECTS.path(namespace, f"{target}-so"), body, "kubectl")


def machine_deployment(kube: KubeClient, namespace: str, name: str, *, replicas: int) -> str:
    """A Cluster API MachineDeployment (applied by 'cluster-api'); returns its path. Needs the
    MachineDeployment CRD installed."""
    path = f"/apis/cluster.x-k8s.io/v1beta1/namespaces/{namespace}/machinedeployments/{name}"
    body = {
        "apiVersion": "cluster.x-k8s.io/v1beta1",
        "kind": "MachineDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterName": "test", "replicas": replicas},
    }
    return _apply(kube, path, body, "cluster-api")


def get(kube: KubeClient, path: str) -> Obj:
    """The object at ``path``, which must exist."""
    obj = kube.get(path)
    assert obj is not None, path
    return obj


def _apply(kube: KubeClient, path: str, body: Obj, field_manager: str) -> str:
    kube.apply(path, body, field_manager=field_manager, dry_run=False)
    return path
