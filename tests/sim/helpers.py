"""Small hand-made traces and a fully specified cluster, so expected numbers can be computed."""

from __future__ import annotations

import numpy as np

from common.ids import ModelId
from forecaster.types import SeriesBatch
from planner.catalog import Catalog, ModelSpec, default_spec
from prewarm.sim.cluster import ClusterSpec, PoolSpec

STEP_S = 60.0

POOL = PoolSpec(
    min_nodes=1,
    gpus_per_node=8,
    image_pull_gbps=1.0,
    remote_gbps=1.0,
    disk_gbps=2.5,
    host_to_gpu_gbps=10.0,
    container_start_s=5.0,
    compile_cached_fraction=0.25,
)
CLUSTER = ClusterSpec(pools=(POOL,))


def spec(model: str, **changes: object) -> ModelSpec:
    from dataclasses import replace

    return replace(default_spec(ModelId(model)), defaulted=False, **changes)  # type: ignore[arg-type]


def batch(rows: dict[str, list[float]], *, start_s: float = 0.0) -> SeriesBatch:
    """A per-minute trace from per-model count lists (padded with zeros to one length)."""
    steps = max(len(v) for v in rows.values())
    counts = np.zeros((len(rows), steps))
    for i, values in enumerate(rows.values()):
        counts[i, : len(values)] = values
    return SeriesBatch(
        models=tuple(ModelId(m) for m in rows), start_s=start_s, step_s=STEP_S, counts=counts
    )


def intermittent(models: int, steps: int, *, seed: int) -> SeriesBatch:
    """Synthetic mixed traffic: some periodic, some bursty, some rare models."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((models, steps))
    for i in range(models):
        kind = i % 3
        if kind == 0:
            period = 5 + 7 * (i % 4)
            counts[i, ::period] = 1 + rng.poisson(2, size=counts[i, ::period].shape)
        elif kind == 1:
            counts[i] = rng.poisson(3.0, size=steps) * (rng.random(steps) < 0.5)
        else:
            counts[i] = rng.poisson(0.02, size=steps)
    return SeriesBatch(
        models=tuple(ModelId(f"m{i}") for i in range(models)),
        start_s=0.0,
        step_s=STEP_S,
        counts=counts,
    )


def catalog(*specs: ModelSpec) -> Catalog:
    return Catalog(specs={s.model: s for s in specs})
