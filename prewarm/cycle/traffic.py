"""What the request history says about each model now: rates, idle gaps, silences.

Owns: folding newly observed history steps (a :class:`forecaster.types.SeriesBatch`) into per-model
records, over all models at once: the latest observed rate, the mean rate while active, the
idle-time record (:class:`planner.recency.IdleTimeRecord`) and the silence before the latest step
with requests (for counting cold starts avoided). Must not: read a clock or do I/O; time comes from
the batches.

A step delivered twice (a source that re-reads its last step) is not folded in twice: a model's
steps ending no later than its latest one folded in are ignored. Missing values (NaN) are "no
data": they neither count as requests nor reset a rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.ids import ModelId
from forecaster.types import SeriesBatch
from planner.recency import IdleTimeRecord


@dataclass(frozen=True, slots=True)
class StepTraffic:
    """One model's requests in the latest observed step, with the silence before them."""

    model: ModelId
    requests: float
    silence_before_s: float
    """Seconds without requests before this step (``inf``: the model's first requests)."""


class TrafficRecord:
    """Per-model traffic records, grown as models appear; mutable, fed batch by batch."""

    def __init__(self) -> None:
        self._rows: dict[ModelId, int] = {}
        self._models: list[ModelId] = []
        # Rows are allocated ahead (at least 8, doubling), so row 0 always exists.
        self._idle = IdleTimeRecord(8)
        self._rate = np.zeros(8)
        self._active_requests = np.zeros(8)
        self._active_steps = np.zeros(8)
        self._last_traffic_s = np.full(8, -np.inf)
        self._silence_s = np.zeros(8)
        self._seen_end_s = np.full(8, -np.inf)
        self._step_s = 1.0
        self._latest: tuple[StepTraffic, ...] = ()

    def _rows_of(self, models: Sequence[ModelId]) -> np.ndarray:
        for model in models:
            if model not in self._rows:
                self._rows[model] = len(self._models)
                self._models.append(model)
        size = len(self._models)
        if size > self._rate.size:
            grow = 2 * size - self._rate.size
            self._idle = self._idle.resized(self._rate.size + grow)
            self._rate = np.concatenate([self._rate, np.zeros(grow)])
            self._active_requests = np.concatenate([self._active_requests, np.zeros(grow)])
            self._active_steps = np.concatenate([self._active_steps, np.zeros(grow)])
            self._last_traffic_s = np.concatenate([self._last_traffic_s, np.full(grow, -np.inf)])
            self._silence_s = np.concatenate([self._silence_s, np.zeros(grow)])
            self._seen_end_s = np.concatenate([self._seen_end_s, np.full(grow, -np.inf)])
        return np.array([self._rows[m] for m in models], dtype=np.int64)

    def observe(self, batch: SeriesBatch) -> None:
        """Fold in every step of ``batch`` that ends after the latest step folded in so far for
        its model (a model first seen in a later batch still gets its earlier steps)."""
        rows = self._rows_of(batch.models)
        step_s = self._step_s = batch.step_s
        latest = np.full(rows.size, np.nan)
        for column in range(batch.steps):
            start_s = batch.start_s + column * step_s
            end_s = start_s + step_s
            fresh = self._seen_end_s[rows] < end_s
            if not fresh.any():
                continue
            at, counts = rows[fresh], batch.counts[fresh, column]
            self._seen_end_s[at] = end_s
            valid = ~np.isnan(counts)
            busy = valid & (counts > 0)
            self._idle.observe(
                _mask(at[busy], self._idle.last_s.size), end_s=end_s, start_s=start_s
            )
            valid_rows, busy_rows = at[valid], at[busy]
            self._rate[valid_rows] = counts[valid] / step_s
            self._active_requests[busy_rows] += counts[busy]
            self._active_steps[busy_rows] += 1.0
            last = self._last_traffic_s[busy_rows]
            self._silence_s[at[valid & ~busy]] = 0.0
            self._silence_s[busy_rows] = np.where(
                np.isfinite(last), start_s - last - step_s, np.inf
            )
            self._last_traffic_s[busy_rows] = start_s
            positions = np.flatnonzero(fresh)[valid]
            latest[positions] = counts[valid]
        served = np.flatnonzero(latest > 0)
        self._latest = tuple(
            StepTraffic(
                model=self._models[int(rows[i])],
                requests=float(latest[i]),
                silence_before_s=float(self._silence_s[rows[i]]),
            )
            for i in served.tolist()
        )

    def take_latest(self) -> tuple[StepTraffic, ...]:
        """The latest observed step's traffic (models with requests), once: a second call before
        new steps arrive returns nothing, so a step is counted once however often cycles run."""
        latest, self._latest = self._latest, ()
        return latest

    def observed_rps(self, model: ModelId) -> float | None:
        """The latest observed request rate of ``model`` (None: never observed)."""
        row = self._rows.get(model)
        return None if row is None else float(self._rate[row])

    def rates(self) -> Mapping[ModelId, float]:
        """The latest observed rate of every model seen."""
        return dict(zip(self._models, self._rate[: len(self._models)].tolist(), strict=True))

    def state_of(
        self, models: Sequence[ModelId], window_s: Iterable[float], *, now_s: float
    ) -> ModelTraffic:
        """The records of ``models`` now, with P(request within each model's window) from its
        idle-time record (0 for a model never observed)."""
        known = np.array([m in self._rows for m in models], dtype=np.bool_)
        rows = np.array([self._rows.get(m, 0) for m in models], dtype=np.int64)
        windows = np.zeros(self._idle.last_s.size)
        window_list = np.fromiter(window_s, dtype=np.float64, count=len(models))
        windows[rows[known]] = window_list[known]
        p_all = self._idle.p_within(now_s, windows)
        gaps = self._idle.gaps()
        active_rps = self._active_requests / np.maximum(self._active_steps, 1.0) / self._step_s
        step_rates = np.where(known, active_rps[rows], 0.0)
        return ModelTraffic(
            observed_rps=np.where(known, self._rate[rows], 0.0),
            active_rps=step_rates,
            p_observed=np.where(known, p_all[rows], 0.0),
            last_request_s=np.where(known, self._idle.last_s[rows], -np.inf),
            idle_gaps=np.where(known, np.rint(gaps[rows]), 0).astype(np.int64),
        )


@dataclass(frozen=True, slots=True)
class ModelTraffic:
    """Per-model arrays (in the order asked for) from :meth:`TrafficRecord.state_of`."""

    observed_rps: np.ndarray
    active_rps: np.ndarray
    """Mean requests/s over the steps that had requests."""
    p_observed: np.ndarray
    last_request_s: np.ndarray
    idle_gaps: np.ndarray


def _mask(rows: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=np.bool_)
    mask[rows] = True
    return mask


def joined(earlier: SeriesBatch | None, later: SeriesBatch | None) -> SeriesBatch | None:
    """One batch covering ``earlier`` then ``later`` (steps between them, and models one of them
    lacks, are missing values); either may be None. Batches on different step widths cannot be
    joined: the later one alone is returned."""
    if earlier is None or earlier.steps == 0:
        return later
    if later is None or later.steps == 0:
        return earlier
    if not math.isclose(earlier.step_s, later.step_s):
        return later
    step_s = earlier.step_s
    models = list(earlier.models) + [m for m in later.models if m not in set(earlier.models)]
    row = {m: i for i, m in enumerate(models)}
    steps = max(earlier.steps, round((later.end_s - earlier.start_s) / step_s))
    counts = np.full((len(models), steps), np.nan)
    counts[: len(earlier.models), : earlier.steps] = earlier.counts
    offset = round((later.start_s - earlier.start_s) / step_s)
    rows = [row[m] for m in later.models]
    counts[rows, offset : offset + later.steps] = later.counts
    return SeriesBatch(models=tuple(models), start_s=earlier.start_s, step_s=step_s, counts=counts)
