"""Mean-reverting level model: the newest step's deviation from a local mean, decaying (vectorised).

Forecast ``h`` steps after the origin: ``mu + beta_h * (y_last - mu)``, where ``mu`` is the mean of
the last ``mean_window`` steps (the newest included) and ``y_last`` the newest step. ``beta_h`` is
the series' own direct least-squares coefficient of ``y_{t+h} - mu_t`` on ``y_t - mu_t`` over the
last ``fit_steps`` origins of its history, clipped to ``[0, 1]``: an AR model around a moving mean
whose decay is measured rather than assumed geometric. It is estimated at horizons 1, 2, 4, 8, ...
and the last step, and interpolated linearly in between.

It interpolates, per series and from evidence, between the naive forecast (a random walk or a
persistent shift: ``beta ~ 1``) and the local mean (white noise around a level: ``beta ~ 0``), and
does what neither can for a level that dips or bursts for a few minutes and then returns (a
deployment, a batch client, a throttled upstream): trust the newest step for the next minutes and
the mean after.

Robustness: values are first winsorised to the mean +- ``CLIP_SD`` standard deviations of the fit
span (twice, as the first pass's spread is inflated by the spikes it clips), so one burst of a
mostly idle series neither holds the mean up for hours nor, in the fit, teaches that deviations
vanish. The price: a sudden, lasting shift larger than that is followed only as it fills the fit
span; the naive and fast smoothing candidates follow it at once, and selection moves to them. A
horizon with fewer than ``MIN_PAIRS`` pairs in the fit span gets ``beta_h = 0`` (the local mean).
Missing steps (NaN) are skipped in the means and count as no deviation in the fit (a missing
``y_{t+h}`` reads the fit span's mean); with no observed step in the mean window the recent level
(:func:`naive.recent_level`) stands in.

Cost: one gather of ``span`` steps, shared through ``cache`` by the variants evaluated at one
origin, then a few cumulative sums and one dot product of ``fit_steps`` per series and estimated
horizon. Stateless, so it can be evaluated at any past origin. Must not: do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from forecaster.models.base import HistoryView, IntArray
from forecaster.models.naive import recent_level
from forecaster.types import FloatArray

Float32Array = NDArray[np.float32]
CLIP_SD = 3.0
"""Values are clipped to the fit span's mean +- this many standard deviations (at least 1)."""
MIN_PAIRS = 8
"""Pairs ``(y_t - mu_t, y_{t+h} - mu_t)`` a horizon needs before its coefficient is estimated."""


@dataclass(frozen=True, slots=True)
class Block:
    """The last ``span`` steps of every series, prepared once per origin for every variant."""

    values: Float32Array  # (models, span): winsorised, minus ``centre``; missing steps read 0
    finite: NDArray[np.bool_] | None  # observed steps; None when all are
    total: Float32Array  # (models, span + 1): cumulative sums of ``values``, a leading 0 column
    centre: FloatArray  # (models,): the mean of the fit span (after winsorising)


BlockKey = tuple[int, int, int]
BlockCache = dict[BlockKey, Block]
"""Per-origin memo of the prepared block, per ``(end, span, fit_steps)``."""


def anchor_steps(horizon: int) -> IntArray:
    """Horizons (1-based) at which ``beta_h`` is estimated: 1, 2, 4, 8, ... and ``horizon``."""
    last = max(1, horizon)
    powers = 2 ** np.arange(last.bit_length(), dtype=np.int64)
    out: IntArray = np.unique(np.append(powers[powers < last], last))
    return out


def mean_reverting(
    history: HistoryView,
    end: int,
    horizon: int,
    *,
    mean_window: int,
    fit_steps: int,
    span: int | None = None,
    cache: BlockCache | None = None,
) -> FloatArray:
    """Point forecasts ``(models, horizon)``, finite and non-negative (see the module doc).

    ``span`` (at least ``fit_steps + mean_window - 1``, the default) is how many steps are read
    and winsorised; variants with different ``mean_window`` that pass the same ``span`` and
    ``cache`` share that work at one origin (the caller clears the cache between origins).
    """
    if mean_window < 1 or fit_steps < 2:
        raise ValueError(f"need mean_window >= 1 and fit_steps >= 2: {mean_window}, {fit_steps}")
    need = fit_steps + mean_window - 1
    span = need if span is None else span
    if span < need:
        raise ValueError(f"span {span} is shorter than fit_steps + mean_window - 1 = {need}")
    block = _block(history, end, span, fit_steps, cache)
    filled, finite, total = block.values, block.finite, block.total
    models = filled.shape[0]
    # Positions span - fit_steps .. span - 1 are the fit origins; mu[:, i] is the mean of the
    # mean_window steps ending at origin i (inclusive). ``total`` has a leading zero column.
    first = span - fit_steps
    mu = total[:, first + 1 :] - total[:, first + 1 - mean_window : span + 1 - mean_window]
    now = filled[:, first:]
    if finite is None:
        mu *= 1.0 / mean_window
        x = now - mu
        seen_last = np.ones(models, dtype=bool)
        observed = np.full(models, float(fit_steps))
    else:
        count = np.zeros((models, span + 1), dtype=np.float32)
        np.cumsum(finite, axis=1, out=count[:, 1:])
        window_count = (
            count[:, first + 1 :] - count[:, first + 1 - mean_window : span + 1 - mean_window]
        )
        seen = window_count > 0
        mu /= np.maximum(window_count, 1.0)
        x = np.where(seen & finite[:, first:], now - mu, 0.0)
        seen_last = seen[:, -1]
        observed = finite[:, first:].sum(axis=1).astype(np.float64)
    # sum_{t<p} x_t (y_{t+h} - mu_t) = x[:p] . y[h:] - x[:p] . mu[:p], p = fit_steps - h: the
    # last two and sum x_t^2 are the full sums less a short tail (p is close to fit_steps). The
    # block is centred (see _block), so the two dot products are of deviation-sized terms and do
    # not cancel.
    anchors = anchor_steps(horizon)
    betas = np.zeros((models, anchors.size))
    square = _dot(x, x)
    cross = _dot(x, mu)
    for column, ahead in enumerate(anchors):
        pairs = fit_steps - int(ahead)
        if pairs < MIN_PAIRS:
            continue
        tail = x[:, pairs:]
        numerator = _dot(x[:, :pairs], now[:, ahead:]) - (cross - _dot(tail, mu[:, pairs:]))
        denominator = square - _dot(tail, tail)
        usable = (denominator > 1e-9) & (observed - ahead >= MIN_PAIRS)
        ratio = numerator / np.where(usable, denominator, 1.0)
        betas[:, column] = np.where(usable, np.clip(ratio, 0.0, 1.0), 0.0)
    beta = _interpolate(np.arange(1, horizon + 1, dtype=np.float64), anchors, betas)
    level = mu[:, -1] + block.centre
    if not seen_last.all():
        level = np.where(seen_last, level, recent_level(history, end, mean_window))
    out: FloatArray = np.maximum(level[:, None] + beta * x[:, -1:], 0.0)
    return out


def _block(
    history: HistoryView, end: int, span: int, fit_steps: int, cache: BlockCache | None
) -> Block:
    key = (end, span, fit_steps)
    if cache is not None and key in cache:
        return cache[key]
    values = history.gather(np.arange(-span, 0, dtype=np.int64), end=end)  # a fresh array
    missing = np.isnan(values)
    finite: NDArray[np.bool_] | None = None
    if missing.any():
        finite = ~missing
        values[missing] = 0.0
        count = np.maximum(finite[:, -fit_steps:].sum(axis=1), 1).astype(np.float64)
    else:
        count = np.full(values.shape[0], float(fit_steps))
    _winsorise(values, finite, fit_steps, count)
    # Centred on the fit span's mean: the dot products in mean_reverting then sum
    # deviation-sized terms (no cancellation of level-sized ones), and a missing step reads
    # the centre.
    centre = values[:, -fit_steps:].sum(axis=1) / count
    values -= centre[:, None]
    if finite is not None:
        values[missing] = 0.0
    # float32 from here: the values are deviations from the centre, so single precision loses
    # nothing that matters, and the per-variant passes read half the bytes.
    small = values.astype(np.float32)
    total = np.zeros((values.shape[0], span + 1), dtype=np.float32)
    np.cumsum(small, axis=1, out=total[:, 1:])
    block = Block(values=small, finite=finite, total=total, centre=centre)
    if cache is not None:
        cache[key] = block
    return block


def _winsorise(
    values: FloatArray, finite: NDArray[np.bool_] | None, fit_steps: int, count: FloatArray
) -> None:
    """Clip each series, in place, to the mean +- ``CLIP_SD`` standard deviations (at least 1)
    of its ``count`` observed steps among the last ``fit_steps``. The spread is measured twice,
    the second time on the first pass's clipped values (the first is inflated by the spikes it
    clips). Missing steps (0 in ``values``, ``False`` in ``finite``) stay 0."""
    recent = values[:, -fit_steps:]
    low, high = _bounds(recent, count)
    clipped = np.clip(recent, low, high)
    if finite is not None:
        clipped = np.where(finite[:, -fit_steps:], clipped, 0.0)
    low, high = _bounds(clipped, count)
    np.clip(values, low, high, out=values)
    if finite is not None:
        values[~finite] = 0.0


def _dot(left: Float32Array, right: Float32Array) -> FloatArray:
    """Row-wise dot products, as float64."""
    out: FloatArray = np.einsum("ij,ij->i", left, right).astype(np.float64)
    return out


def _bounds(recent: FloatArray, count: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = recent.sum(axis=1) / count
    square = np.einsum("ij,ij->i", recent, recent) / count
    spread = np.sqrt(np.maximum(square - mean * mean, 0.0))
    bound = CLIP_SD * np.maximum(spread, 1.0)
    return (mean - bound)[:, None], (mean + bound)[:, None]


def _interpolate(steps: FloatArray, anchors: IntArray, values: FloatArray) -> FloatArray:
    """Row-wise linear interpolation of ``values (models, anchors)`` at ``steps``; flat beyond."""
    if anchors.size == 1:
        out: FloatArray = np.repeat(values, steps.size, axis=1)
        return out
    right = np.clip(np.searchsorted(anchors, steps), 1, anchors.size - 1)
    left = right - 1
    width = (anchors[right] - anchors[left]).astype(np.float64)
    fraction = np.clip((steps - anchors[left]) / width, 0.0, 1.0)
    between: FloatArray = values[:, left] + fraction[None, :] * (values[:, right] - values[:, left])
    return between
