"""Fixtures of the forecaster tests: a real Prometheus factory and small synthetic series."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from common.ids import ModelId
from forecaster.types import SeriesBatch
from tests.harness.prometheus import RunningPrometheus, prometheus_with_history

PrometheusFactory = Callable[[SeriesBatch], RunningPrometheus]


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start a real Prometheus holding a batch's history: ``url = prometheus_server(batch).url``.

    Fails (never skips) when prometheus/promtool are missing. Stopped at teardown.
    """
    with ExitStack() as stack:
        counter = iter(range(1000))

        def start(batch: SeriesBatch) -> RunningPrometheus:
            workdir = tmp_path / f"prometheus-{next(counter)}"
            workdir.mkdir()
            return stack.enter_context(prometheus_with_history(batch, workdir))

        yield start


def synthetic_batch(
    *,
    models: int = 3,
    days: float = 2.0,
    step_s: float = 60.0,
    start_s: float = 1_700_000_000.0 - (1_700_000_000.0 % 86400),
    seed: int = 0,
    sparse: bool = False,
) -> SeriesBatch:
    """Poisson counts with a daily cycle (and a quiet, intermittent series when ``sparse``)."""
    rng = np.random.default_rng(seed)
    steps = int(days * 86400 / step_s)
    t = start_s + np.arange(steps) * step_s
    phase = 2 * np.pi * (t % 86400) / 86400
    rows = []
    for index in range(models):
        base = 5.0 * (index + 1) * step_s / 60.0
        rate = base * (1.2 + np.sin(phase + index))
        if sparse and index == models - 1:
            rate = np.full(steps, 0.02 * step_s / 60.0)
        rows.append(rng.poisson(np.maximum(rate, 0.0)).astype(np.float64))
    ids = tuple(ModelId(f"model-{index}") for index in range(models))
    return SeriesBatch(models=ids, start_s=start_s, step_s=step_s, counts=np.stack(rows))


@pytest.fixture
def small_batch() -> SeriesBatch:
    """Three models, two days of per-minute counts with a daily cycle, one of them intermittent."""
    return synthetic_batch(sparse=True)


def write_trace(batch: SeriesBatch, path: Path) -> Path:
    """``batch`` as a bucketed trace CSV (``timestamp,model,requests``; zero counts left out)."""
    lines = ["timestamp,model,requests"]
    for step in range(batch.steps):
        for row, model in enumerate(batch.models):
            count = int(batch.counts[row, step])
            if count:
                lines.append(f"{int(batch.start_s + step * batch.step_s)},{model},{count}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
