"""Intermittent demand: TSB (Teunter-Syntetos-Babai) and idle-time hazards, vectorised.

For rarely used models the question is not "how many" but "will anything arrive soon". Two views:
- TSB: ``p`` = exponentially weighted share of active steps, ``z`` = weighted mean size of non-zero
  counts; the point forecast is ``p * z`` (flat).
- Idle-time histogram (as Azure Functions' hybrid-histogram keep-alive policy): the distribution of
  gaps between active steps; with the current idle time ``s``, the hazard
  ``P(next activation at s+k | none before s+k)`` per step ``k``. Periodic (timer-driven) models get
  hazards near 1 exactly where they fire; ``1 - prod(1 - h_k)`` is P(at least one within k steps).
Both read a window of history only (no state), so they can be evaluated at past origins.
Must not: do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecaster.models.base import HistoryView
from forecaster.types import FloatArray


@dataclass(frozen=True, slots=True)
class IntermittentEstimate:
    """TSB and idle-time estimates for every series at one origin."""

    p: FloatArray
    """TSB probability that a step is active, ``(models,)``."""
    size: FloatArray
    """TSB mean size of an active step, ``(models,)``."""
    hazard: FloatArray
    """P(active at step k | idle until then), ``(models, horizon)``, in [0, 1]."""
    zero_share: FloatArray
    """Share of observed steps in the window that were zero, ``(models,)``."""


def estimate(
    history: HistoryView,
    end: int,
    horizon: int,
    *,
    window: int,
    max_idle: int,
    smoothing: float = 0.2,
    prior_weight: float = 2.0,
) -> IntermittentEstimate:
    """TSB and idle-time hazards from the last ``window`` steps before ``end``.

    ``smoothing`` is TSB's per-step weight decay (an exponential half-life of ~``0.7/smoothing``
    activations is too short for rare models, so it applies per step: ``(1-smoothing/10)^age``).
    Hazards are shrunk towards TSB's ``p`` with ``prior_weight`` pseudo-observations, so a series
    idle for longer than any gap seen so far still gets a sane, non-zero hazard.
    """
    values = history.gather(np.arange(-window, 0, dtype=np.int64), end=end)
    n = values.shape[0]
    observed = np.isfinite(values)
    active = observed & (values > 0)
    decay = 1.0 - smoothing / 10.0
    weights = decay ** np.arange(window - 1, -1, -1, dtype=np.float64)
    w_obs = observed * weights
    w_total = w_obs.sum(axis=1)
    p = np.where(w_total > 0, (active * weights).sum(axis=1) / np.maximum(w_total, 1e-12), 0.0)
    w_active = active * weights
    size_total = w_active.sum(axis=1)
    sizes = np.where(active, values, 0.0) * weights
    size = np.where(size_total > 0, sizes.sum(axis=1) / np.maximum(size_total, 1e-12), 0.0)
    zero_share = np.where(
        observed.sum(axis=1) > 0,
        1.0 - active.sum(axis=1) / np.maximum(observed.sum(axis=1), 1),
        1.0,
    )

    bins = max_idle + 2  # gaps 0..max_idle, plus one overflow bin
    rows, cols = np.nonzero(active)
    gaps = np.diff(cols)
    same = np.diff(rows) == 0
    gap_rows = rows[1:][same]
    gap_values = np.minimum(gaps[same], bins - 1)
    counts = np.bincount(gap_rows * bins + gap_values, minlength=n * bins).reshape(n, bins)
    counts = counts.astype(np.float64)
    tail = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    last = np.full(n, -1, dtype=np.int64)
    if rows.size:
        # np.nonzero is row-major, so the last entry per row is its latest activation.
        last[rows] = cols
    idle = np.where(last >= 0, window - last, window + max_idle)
    ahead = idle[:, None] + np.arange(horizon, dtype=np.int64)[None, :]
    index = np.minimum(ahead, bins - 1)
    at = np.take_along_axis(counts, index, axis=1)
    beyond = np.take_along_axis(tail, index, axis=1)
    prior = p[:, None]
    hazard = (at + prior_weight * prior) / (beyond + prior_weight)
    hazard = np.clip(np.where(index == bins - 1, np.maximum(hazard, prior), hazard), 0.0, 1.0)
    return IntermittentEstimate(p=p, size=size, hazard=hazard, zero_share=zero_share)


def tsb_point(estimate_: IntermittentEstimate) -> FloatArray:
    """Point forecast per step: hazard of activity times the mean active size."""
    out: FloatArray = estimate_.hazard * estimate_.size[:, None]
    return out
