"""Split-conformal-style uncertainty for point models, pooled across series and locally scaled.

Residuals ``r = actual - point`` from rolling-origin evaluation are divided by a per-series scale
``sigma`` (an exponentially weighted mean of ``|r|``) and pooled, per model, volume stratum and
horizon step, in a bounded first-in-first-out sample (recent evidence wins). Quantile ``q`` of a
forecast is ``point + sigma * Q(q)``: calibrated across series by construction (the coverage a
backtest measures), while wider for noisier series. Pools are kept per volume stratum (the series'
recent level on a log scale; "Mondrian" conformal), because the residual shape of a model that
sees 0.1 requests a step (mostly zeros, rare spikes) says nothing about one that sees 1,000.

On top, an adaptive width per (model, stratum) keeps the planning quantile calibrated when the
residuals drift (adaptive conformal inference, Gibbs and Candes 2021): every scored step above the
planning quantile widens the upper quantiles a little, every one below narrows them, so the miss
rate converges to ``1 - q``. Upper quantiles are ``point + sigma*(Q(0.5) + w*(Q(q) - Q(0.5)))``.
Must not: do I/O.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from forecaster.types import FloatArray

STRATUM_EDGES = np.asarray([0.05, 0.5, 2.0, 10.0, 50.0, 250.0])
"""Upper edges of the volume strata (requests per step of the recent level)."""
STRATA = len(STRATUM_EDGES) + 1
MERGED_REFRESH = 32
RESORT_EVERY = 8
"""Pools are re-sorted after this many updates (quantiles move slowly; sorting is the cost)."""
MIN_WIDTH = 0.4
MAX_WIDTH = 3.0
MIN_EVIDENCE = 32
"""Residuals a (model, stratum, step) pool needs before its own quantiles are used."""


def stratum(level: FloatArray) -> NDArray[np.int64]:
    """The volume stratum of each series from its recent level (requests per step)."""
    out: NDArray[np.int64] = np.searchsorted(STRATUM_EDGES, level, side="right").astype(np.int64)
    return out


class ResidualModel:
    """Per-series scales and pooled normalised residuals for ``candidates`` point models."""

    def __init__(
        self, *, candidates: int, horizon: int, pool_size: int = 512, seed: int = 0
    ) -> None:
        self.candidates = candidates
        self.horizon = horizon
        self.pool_size = pool_size
        self.sigma: NDArray[np.float32] = np.zeros((candidates, 0), dtype=np.float32)
        self.sigma_weight: NDArray[np.float32] = np.zeros((candidates, 0), dtype=np.float32)
        self.pool = np.full((candidates, STRATA, horizon, pool_size), np.nan, dtype=np.float32)
        self._next = np.zeros((STRATA, horizon), dtype=np.int64)
        self._rng = np.random.default_rng(seed)
        self.log_width = np.zeros((candidates, STRATA))
        self._version = 0
        self._cache: dict[tuple[float, ...], tuple[int, FloatArray]] = {}
        self._sorted_version = -1
        self._merged_version = -(10**9)
        self._dirty: set[int] = set(range(STRATA))
        self._sorted = np.sort(self.pool, axis=-1)
        self._counts: NDArray[np.int64] = np.zeros((candidates, STRATA, horizon), dtype=np.int64)
        self._merged = self.pool[:, 0]
        self._merged_counts: NDArray[np.int64] = np.zeros((candidates, horizon), dtype=np.int64)

    def grow(self, models: int) -> None:
        """Make room for ``models`` series (new series start with no evidence)."""
        extra = models - self.sigma.shape[1]
        if extra > 0:
            pad = np.zeros((self.candidates, extra), dtype=np.float32)
            self.sigma = np.concatenate([self.sigma, pad], axis=1)
            self.sigma_weight = np.concatenate([self.sigma_weight, pad], axis=1)

    def scale(self, fallback: FloatArray) -> FloatArray:
        """Per-candidate, per-series scale ``(candidates, models)``, blended with ``fallback``.

        Series with little evidence lean on ``fallback`` (e.g. ``sqrt(level)`` for Poisson-like
        counts), so a new series never gets a zero-width interval.
        """
        weight = np.minimum(self.sigma_weight / 8.0, 1.0)
        blended = weight * self.sigma + (1.0 - weight) * fallback[None, :]
        out: FloatArray = np.maximum(blended, 1e-3).astype(np.float64)
        return out

    def update(
        self,
        residuals: FloatArray,
        steps: NDArray[np.int64],
        scale: FloatArray,
        strata: NDArray[np.int64],
        *,
        decay: float = 0.05,
    ) -> None:
        """Fold in residuals ``(candidates, models, len(steps))`` at ``steps`` (NaN skipped).

        ``scale`` is the scale used to normalise them, ``(candidates, models)``; ``strata`` the
        series' volume strata when the forecasts were made. The same as :meth:`update_scales`
        then :meth:`update_pools` (which a caller scoring a fleet a chunk at a time calls).
        """
        self.update_scales(residuals, decay=decay)
        self.update_pools((residuals / scale[:, :, None]).astype(np.float32), steps, strata)

    def update_scales(
        self, residuals: FloatArray, *, rows: slice | None = None, decay: float = 0.05
    ) -> None:
        """The per-series half of :meth:`update`: fold ``residuals`` into the scales of the
        series ``rows`` (all when None); each series' scale depends on its residuals only."""
        sigma = self.sigma if rows is None else self.sigma[:, rows]
        weight = self.sigma_weight if rows is None else self.sigma_weight[:, rows]
        finite = np.isfinite(residuals)
        abs_mean = np.where(finite, np.abs(residuals), 0.0).sum(axis=2)
        count = finite.sum(axis=2)
        has = count > 0
        mean_abs = np.where(has, abs_mean / np.maximum(count, 1), 0.0)
        rate = np.where(has, np.maximum(decay, 1.0 / (1.0 + weight)), 0.0)
        new_sigma = ((1.0 - rate) * sigma + rate * mean_abs).astype(np.float32)
        new_weight = (weight + has).astype(np.float32)
        if rows is None:
            self.sigma, self.sigma_weight = new_sigma, new_weight
        else:
            self.sigma[:, rows], self.sigma_weight[:, rows] = new_sigma, new_weight

    def update_pools(
        self,
        normalised: NDArray[np.float32],
        steps: NDArray[np.int64],
        strata: NDArray[np.int64],
    ) -> None:
        """The pooled half of :meth:`update`: residuals already divided by their scale,
        ``(candidates, models, len(steps))`` over every series, sampled into the pools."""
        limit = self.pool_size // 4
        for group in np.unique(strata):
            members = np.flatnonzero(strata == group)
            if members.size > limit:
                members = self._rng.choice(members, limit, replace=False)
            block = normalised[:, members, :]
            useful = np.isfinite(block).any(axis=(0, 2))
            block = block[:, useful, :]
            size = block.shape[1]
            if size == 0:
                continue
            self._dirty.add(int(group))
            for position, step in enumerate(steps):
                if step >= self.horizon:
                    continue
                start = int(self._next[group, step])
                slots = (start + np.arange(size)) % self.pool_size
                self.pool[:, group, step, slots] = block[:, :, position]
                self._next[group, step] = (start + size) % self.pool_size
        self._version += 1

    def adapt_width(
        self,
        missed: NDArray[np.bool_],
        scored: NDArray[np.bool_],
        strata: NDArray[np.int64],
        *,
        level: float,
        rate: float = 0.01,
        max_step: float = 0.2,
    ) -> None:
        """Adapt the width from ``missed`` (actual above the ``level`` forecast) per scored entry.

        ``missed`` and ``scored`` are ``(candidates, models, steps)``; ``strata`` is ``(models,)``.
        """
        for group in np.unique(strata):
            members = strata == group
            count = scored[:, members].sum(axis=(1, 2))
            misses = (missed & scored)[:, members].sum(axis=(1, 2))
            step = rate * (misses - (1.0 - level) * count)
            self.log_width[:, group] = np.clip(
                self.log_width[:, group] + np.clip(step, -max_step, max_step),
                np.log(MIN_WIDTH),
                np.log(MAX_WIDTH),
            )
        self._version += 1

    def quantiles(self, levels: tuple[float, ...]) -> FloatArray:
        """Normalised residual quantiles ``(candidates, strata, len(levels), horizon)``.

        A (stratum, step) pool with fewer than ``MIN_EVIDENCE`` residuals uses the pool of all
        strata at that step; without that either, a Gaussian-like default (``|r|`` mean 1 => sd
        ~1.25). The pools are re-sorted every ``RESORT_EVERY`` updates; levels are then cheap.
        """
        cached = self._cache.get(levels)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        if self._sorted_version < 0 or self._version - self._sorted_version >= RESORT_EVERY:
            # Only strata that received residuals are re-sorted (NaN sort last); the pool of all
            # strata, a fallback for sparse strata, is refreshed every MERGED_REFRESH updates.
            for group in self._dirty:
                self._sorted[:, group] = np.sort(self.pool[:, group], axis=-1)
                self._counts[:, group] = np.isfinite(self._sorted[:, group]).sum(axis=-1)
            self._dirty.clear()
            if self._version - self._merged_version >= MERGED_REFRESH:
                merged = self.pool.transpose(0, 2, 1, 3).reshape(self.candidates, self.horizon, -1)
                self._merged = np.sort(merged, axis=-1)
                self._merged_counts = np.isfinite(self._merged).sum(axis=-1)
                self._merged_version = self._version
            self._sorted_version = self._version
            self._cache.clear()
        table = _interpolate(self._sorted, self._counts, levels)  # (C, S, H, L)
        overall = _interpolate(self._merged, self._merged_counts, levels)  # (C, H, L)
        default = 1.25 * np.asarray([NormalDist().inv_cdf(level) for level in levels])
        overall = np.where((self._merged_counts >= MIN_EVIDENCE)[:, :, None], overall, default)
        table = np.where((self._counts >= MIN_EVIDENCE)[..., None], table, overall[:, None, :, :])
        out: FloatArray = table.transpose(0, 1, 3, 2)
        self._cache[levels] = (self._version, out)
        return out


def _interpolate(
    ordered: NDArray[np.float32], count: NDArray[np.int64], levels: tuple[float, ...]
) -> FloatArray:
    """Linear-interpolated quantiles of sorted samples (NaN last) over the last axis."""
    out = np.full((*ordered.shape[:-1], len(levels)), np.nan)
    top = np.maximum(count - 1, 0)
    for index, level in enumerate(levels):
        position = level * top
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, top)
        fraction = position - lower
        low = np.take_along_axis(ordered, lower[..., None], axis=-1)[..., 0]
        high = np.take_along_axis(ordered, upper[..., None], axis=-1)[..., 0]
        out[..., index] = np.where(count > 0, low + fraction * (high - low), np.nan)
    return out
