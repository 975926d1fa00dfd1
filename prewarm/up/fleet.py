"""The local stack's models: small generated weights, their catalog, and their Deployments.

Owns: one safetensors file per model of the trace, sized in proportion to the model's default size
class (megabytes for gigabytes: ``bytes_per_gb``); the catalog that lists them at their *real*
sizes (the daemon observes the agents' real memory, so the planner must plan with the bytes the
agents will hold), each model in its pool (the part of its id before ``/``, as the demo does); the
host-memory cap of each pool's nodes (a share of the pool's models, so that evictions happen);
and one serving Deployment per model, claimed by the ``prewarm.io/model`` label (docs/workloads.md)
at 0 replicas, where the daemon's replica floors land. Must not: apply anything but the user's
side of the cluster (the Deployments, as ``kubectl`` would).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from actuator.kube import DEPLOYMENTS, KubeClient, Obj
from actuator.workloads import MODEL_ANNOTATION, MODEL_LABEL
from common.ids import ModelId, PoolName
from planner.catalog import DEFAULT_IMAGE, DEFAULT_IMAGE_GB, default_spec, dns_name
from prewarm.demo.models import write_model

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SERVING_IMAGE = "vllm/vllm-openai:v0.9"
SERVING_NAMESPACE = "serving"
"""Where the user's serving Deployments are."""
SINGLE_POOL = PoolName("gpu")


def pool_of(model: ModelId) -> PoolName:
    """A model's pool: the part of its id before ``/`` (ServeGen's ``m-large/c3`` is a client of
    the ``m-large`` model, as in the demo), else one pool for all."""
    head, _, tail = model.partition("/")
    return PoolName(dns_name(head) or SINGLE_POOL) if tail else SINGLE_POOL


@dataclass(frozen=True)
class Fleet:
    """The models of the stack: where their catalog is, each one's pool, weights and workload."""

    catalog_path: Path
    pools: dict[PoolName, tuple[ModelId, ...]]
    weights_bytes: dict[ModelId, int]
    workloads: dict[ModelId, str]
    """Each model's Deployment name (in the serving namespace)."""

    def host_caps(self, share: float) -> dict[PoolName, int]:
        """Each pool's host-tier cap per node: ``share`` of its models' weights, never less than
        its largest model (plus 1 MiB for the agent's own files)."""
        caps: dict[PoolName, int] = {}
        for pool, models in self.pools.items():
            sizes = [self.weights_bytes[m] for m in models]
            caps[pool] = max(int(share * sum(sizes)), max(sizes)) + 1024**2
        return caps


def build_fleet(models: tuple[ModelId, ...], workdir: Path, *, bytes_per_gb: int) -> Fleet:
    """Write each model's weights under ``workdir/models`` and the catalog ``workdir/catalog.yaml``
    (weights at their real sizes, each model in its pool)."""
    models_dir = workdir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, object] = {}
    pools: dict[PoolName, list[ModelId]] = {}
    weights_bytes: dict[ModelId, int] = {}
    workloads: dict[ModelId, str] = {}
    for model in models:
        spec = default_spec(model)
        path = write_model(models_dir, model, weights_gb=spec.weights_gb, bytes_per_gb=bytes_per_gb)
        size = path.stat().st_size
        pool = pool_of(model)
        pools.setdefault(pool, []).append(model)
        weights_bytes[model] = size
        workloads[model] = (
            dns_name(model) or f"model-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
        )
        entries[model] = {
            "weights_gb": size / 1e9,
            "image": DEFAULT_IMAGE,
            "image_gb": DEFAULT_IMAGE_GB,
            "replica_rps": spec.replica_rps,
            "compile_s": spec.compile_s,
            "node_pool": str(pool),
            "weights": [
                {"uri": path.as_uri(), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            ],
        }
    catalog = workdir / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": entries}, sort_keys=True), encoding="utf-8")
    return Fleet(
        catalog_path=catalog,
        pools={pool: tuple(ms) for pool, ms in pools.items()},
        weights_bytes=weights_bytes,
        workloads=workloads,
    )


def deployment_body(model: ModelId, name: str, *, namespace: str) -> Obj:
    """The serving Deployment of ``model`` at 0 replicas, claimed by the ``prewarm.io/model``
    label (the id itself when it is a valid label value, else ``""`` and the id in the
    annotation of the same name)."""
    labels = {"app": name}
    metadata: Obj = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if len(model) <= 63 and _LABEL_VALUE.match(model):
        metadata["labels"][MODEL_LABEL] = model
    else:
        metadata["labels"][MODEL_LABEL] = ""
        metadata["annotations"] = {MODEL_ANNOTATION: model}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "server", "image": SERVING_IMAGE}]},
            },
        },
    }


def apply_workloads(kube: KubeClient, fleet: Fleet, *, namespace: str) -> None:
    """Apply every model's Deployment (as ``kubectl`` would: prewarm only raises floors)."""
    for model, name in fleet.workloads.items():
        body = deployment_body(model, name, namespace=namespace)
        kube.apply(DEPLOYMENTS.path(namespace, name), body, field_manager="kubectl", dry_run=False)


def replicas(kube: KubeClient, fleet: Fleet, *, namespace: str) -> dict[ModelId, int]:
    """Each model's Deployment's ``spec.replicas`` now (0 when missing), in one list call."""
    listed = {
        d["metadata"]["name"]: int((d.get("spec") or {}).get("replicas") or 0)
        for d in kube.list(DEPLOYMENTS.path(namespace))
    }
    return {model: listed.get(name, 0) for model, name in fleet.workloads.items()}
