"""Serving workloads beyond Deployments, as users (and KServe) apply them: StatefulSets, KServe
InferenceServices and Knative Services, on a real apiserver.

The InferenceService and Knative Service need the projects' REAL CRDs installed
(:func:`tests.harness.crds.real_crds`), so the apiserver validates them against their schemas. No
KServe or Knative controller runs: the objects are stored, and nothing reconciles them.

Must not: apply anything as prewarm (field manager ``kubectl``, or ``kserve`` for what KServe's
controller would create).
"""

from __future__ import annotations

from typing import Any

from actuator.kube import (
    DEPLOYMENTS,
    HPAS,
    INFERENCE_SERVICES,
    KNATIVE_SERVICES,
    STATEFULSETS,
    KubeClient,
    Obj,
)
from tests.harness.workloads import SERVING_IMAGE, deployment_body


def _meta(
    name: str,
    namespace: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner: Obj | None = None,
) -> Obj:
    metadata: Obj = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return metadata


def controller_ref(api_version: str, kind: str, name: str, uid: str) -> Obj:
    """An ownerReference marking its object as controlled (as controllers set them). No
    garbage collector runs in the harness, so the owner need not exist."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labelled_deployment(
    kube: KubeClient,
    namespace: str,
    name: str,
    *,
    replicas: int = 1,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner: Obj | None = None,
    field_manager: str = "kubectl",
) -> str:
    """A serving Deployment with extra labels/annotations/controller; returns its path."""
    body = deployment_body(name, namespace=namespace, replicas=replicas)
    body["metadata"] = _meta(name, namespace, labels=labels, annotations=annotations, owner=owner)
    path = DEPLOYMENTS.path(namespace, name)
    kube.apply(path, body, field_manager=field_manager, dry_run=False)
    return path


def stateful_set(
    kube: KubeClient,
    namespace: str,
    name: str,
    *,
    replicas: int = 1,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> str:
    """A serving StatefulSet (pods labelled ``app: <name>``); returns its path."""
    pod_labels = {"app": name}
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, namespace, labels=labels, annotations=annotations),
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"containers": [{"name": "server", "image": SERVING_IMAGE}]},
            },
        },
    }
    path = STATEFULSETS.path(namespace, name)
    kube.apply(path, body, field_manager="kubectl", dry_run=False)
    return path


def inference_service(
    kube: KubeClient,
    namespace: str,
    name: str,
    *,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    raw: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> str:
    """A KServe InferenceService serving a Hugging Face model; ``raw`` selects KServe's
    RawDeployment mode (Deployment + HPA instead of a Knative Service). Returns its path."""
    annotations = dict(annotations or {})
    if raw:
        annotations["serving.kserve.io/deploymentMode"] = "RawDeployment"
        annotations["serving.kserve.io/autoscalerClass"] = "hpa"
    predictor: dict[str, Any] = {
        "model": {
            "modelFormat": {"name": "huggingface"},
            "storageUri": "hf://Qwen/Qwen2.5-1.5B-Instruct",
        }
    }
    if min_replicas is not None:
        predictor["minReplicas"] = min_replicas
    if max_replicas is not None:
        predictor["maxReplicas"] = max_replicas
    body = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _meta(name, namespace, labels=labels, annotations=annotations),
        "spec": {"predictor": predictor},
    }
    path = INFERENCE_SERVICES.path(namespace, name)
    kube.apply(path, body, field_manager="kubectl", dry_run=False)
    return path


def kserve_raw_children(kube: KubeClient, isvc_path: str) -> tuple[str, str]:
    """What KServe's controller creates for a RawDeployment InferenceService: the Deployment
    ``<name>-predictor`` and its HPA, controlled by the InferenceService and carrying copies of its
    labels and annotations (as KServe propagates them). Returns (deployment path, HPA path)."""
    isvc = kube.get(isvc_path)
    assert isvc is not None
    meta = isvc["metadata"]
    name, namespace = f"{meta['name']}-predictor", meta["namespace"]
    owner = controller_ref(
        "serving.kserve.io/v1beta1", "InferenceService", meta["name"], meta["uid"]
    )
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    dep = labelled_deployment(
        kube,
        namespace,
        name,
        labels=labels,
        annotations=annotations,
        owner=owner,
        field_manager="kserve",
    )
    hpa_body = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, namespace, labels=labels, annotations=annotations, owner=owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 4,
        },
    }
    hpa_path = HPAS.path(namespace, name)
    kube.apply(hpa_path, hpa_body, field_manager="kserve", dry_run=False)
    return dep, hpa_path


def knative_service(
    kube: KubeClient,
    namespace: str,
    name: str,
    *,
    template_annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    revision_name: str | None = None,
    traffic: list[Obj] | None = None,
) -> str:
    """A Knative Serving Service (one container); returns its path."""
    template_meta: Obj = {}
    if template_annotations:
        template_meta["annotations"] = template_annotations
    if revision_name is not None:
        template_meta["name"] = revision_name
    spec: Obj = {
        "template": {
            "metadata": template_meta,
            "spec": {"containers": [{"image": SERVING_IMAGE}]},
        }
    }
    if traffic is not None:
        spec["traffic"] = traffic
    body = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, labels=labels, annotations=annotations),
        "spec": spec,
    }
    path = KNATIVE_SERVICES.path(namespace, name)
    kube.apply(path, body, field_manager="kubectl", dry_run=False)
    return path
