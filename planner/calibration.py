"""Calibration of P(request within the planning window) against what then happened. Pure.

The planner's P for an idle model is the largest of several estimates (the forecast's, the
model's idle-time record's), and the largest of several estimates is over-confident: on the
development traces, idle models given P between 0.6 and 0.8 had a request in the window 34 % of
the time on the Azure Functions sample and 6 % on ServeGen. Holds are ranked and priced by P, so
the planner learns the mapping from what it predicted to what happened:

- every plan records, for each idle model whose last request time is known, the raw P, the end of
  its window and its *context* (:func:`contexts`);
- once the model has a request after the prediction (a hit) or the window ends without one (a
  miss), the prediction is resolved into its context's bin of raw P (decayed counts,
  :data:`HALF_LIFE_S`);
- the pooled map, over every context, takes each bin's hit rate shrunk toward the raw P by
  :data:`PRIOR_TRIALS` pseudo-trials, made non-decreasing across bins (pool-adjacent-violators
  weighted by each bin's outcomes) and interpolated between bins; a context's own map does the
  same with its own outcomes, shrunk toward the pooled map instead of the raw P. Every map keeps
  the order of raw P; before any outcome it is the identity, and a context without outcomes
  follows the pool (a model idle longer than ever before is not taken at its raw P).

The context says which estimate P came from and what the model's record is worth: the same raw
P means different things for a model idle for five minutes and one idle for three hours, for a
P from the forecast and one from the idle-time record, for a record of two gaps and one of
fifty. On the Azure Functions sample, at P 0.2-0.3, models idle under 10 minutes had a request
in the window 30 % of the time and models idle over an hour 10 %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from common.ids import ModelId

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

EDGES = np.array(
    [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
)
"""Bin edges over raw P (finer near 0 and 1, where most predictions fall)."""
PRIOR_TRIALS = 20.0
"""Pseudo-trials at its prior that each bin's hit rate is shrunk toward (the prior: the raw P for
the pooled map, the pooled map for a context's own)."""
HALF_LIFE_S = 12 * 3600.0
"""Half-life of resolved outcomes."""
MAX_PENDING = 256
"""Unresolved prediction batches kept; older ones are dropped unresolved (bounded memory)."""

IDLE_EDGES_S = np.array([15 * 60.0, 3600.0, 4 * 3600.0])
"""Context: time since the model's last request, in four spans (under 15 minutes, under an hour,
under four hours, longer)."""
FEW_GAPS = 3
"""Context: an idle-time record of fewer gaps than this is thin evidence."""
CONTEXTS = 2 * (len(IDLE_EDGES_S) + 1) * 2
"""Number of contexts: P's source x idle span x thin or not."""

_BINS = len(EDGES) - 1
_MIDPOINTS = (EDGES[:-1] + EDGES[1:]) / 2.0


def contexts(
    p_forecast: FloatArray, p_record: FloatArray, idle_s: FloatArray, gaps: FloatArray
) -> IntArray:
    """Each model's calibration context, in ``[0, CONTEXTS)``.

    ``p_forecast`` and ``p_record`` are the two estimates of P (the larger is the raw P), ``idle_s``
    the seconds since the last request (``inf`` when unknown), ``gaps`` how many idle gaps the
    model's record holds.
    """
    from_record = (np.asarray(p_record) > np.asarray(p_forecast)).astype(np.int64)
    span = np.searchsorted(IDLE_EDGES_S, np.nan_to_num(idle_s, nan=np.inf), side="right")
    thin = (np.asarray(gaps) < FEW_GAPS).astype(np.int64)
    spans = len(IDLE_EDGES_S) + 1
    result: IntArray = ((from_record * spans + span) * 2 + thin).astype(np.int64)
    return result


class Prediction(NamedTuple):
    """One idle model's P for one plan: raw P, window length (seconds from now), context."""

    p: float
    window_s: float
    context: int = 0


@dataclass(frozen=True, slots=True)
class _Batch:
    """Predictions made at ``start_s``: per model, its context, bin, raw P and window end."""

    start_s: float
    models: tuple[ModelId, ...]
    contexts: IntArray
    bins: IntArray
    raw: FloatArray
    end_s: FloatArray


def _bins(p: FloatArray) -> IntArray:
    index: IntArray = np.clip(np.searchsorted(EDGES, p, side="right") - 1, 0, _BINS - 1).astype(
        np.int64
    )
    return index


def _zeros() -> FloatArray:
    return np.zeros((CONTEXTS, _BINS))


@dataclass(frozen=True, slots=True)
class Calibration:
    """Resolved outcomes per context and bin, and the predictions still open."""

    trials: FloatArray = field(default_factory=_zeros)
    hits: FloatArray = field(default_factory=_zeros)
    raw_sum: FloatArray = field(default_factory=_zeros)
    last_s: float | None = None
    pending: tuple[_Batch, ...] = ()

    def apply(self, raw: FloatArray, context: IntArray | None = None) -> FloatArray:
        """Calibrated P for raw P values in ``[0, 1]``, each in its context (default 0);
        non-decreasing in raw P within a context."""
        raw = np.clip(np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0), 0.0, 1.0)
        context = (
            np.zeros(raw.shape, np.int64)
            if context is None
            else np.clip(np.asarray(context, dtype=np.int64), 0, CONTEXTS - 1)
        )
        pooled = _fit(self.trials.sum(axis=0), self.hits.sum(axis=0), self.raw_sum.sum(axis=0))
        result = np.zeros(raw.shape)
        for c in np.unique(context).tolist():
            rows = context == c
            own = _fit(self.trials[c], self.hits[c], self.raw_sum[c], prior=pooled)
            result[rows] = own(raw[rows])
        return result

    def update(
        self,
        now_s: float,
        last_request_s: Mapping[ModelId, float],
        predictions: Mapping[ModelId, Prediction],
    ) -> Calibration:
        """Resolve open predictions against ``last_request_s`` (each model's latest request time)
        and open new ones.

        Models without a known last request are neither resolved nor recorded.
        """
        decay = 1.0
        if self.last_s is not None and now_s > self.last_s:
            decay = 0.5 ** ((now_s - self.last_s) / HALF_LIFE_S)
        trials = self.trials * decay
        hits = self.hits * decay
        raw_sum = self.raw_sum * decay
        kept: list[_Batch] = []
        for batch in self.pending:
            last = np.array(
                [last_request_s.get(model, -math.inf) for model in batch.models], dtype=np.float64
            )
            hit = last > batch.start_s
            done = hit | (now_s >= batch.end_s)
            if done.any():
                cells = (batch.contexts[done], batch.bins[done])
                np.add.at(trials, cells, 1.0)
                np.add.at(hits, cells, hit[done].astype(np.float64))
                np.add.at(raw_sum, cells, batch.raw[done])
            if not done.all():
                left = ~done
                kept.append(
                    _Batch(
                        start_s=batch.start_s,
                        models=tuple(m for m, keep in zip(batch.models, left, strict=True) if keep),
                        contexts=batch.contexts[left],
                        bins=batch.bins[left],
                        raw=batch.raw[left],
                        end_s=batch.end_s[left],
                    )
                )
        known = [model for model in predictions if model in last_request_s]
        if known:
            raw = np.array([predictions[m].p for m in known], dtype=np.float64)
            raw = np.clip(np.nan_to_num(raw, nan=0.0), 0, 1)
            window = np.array([predictions[m].window_s for m in known], dtype=np.float64)
            context = np.array([predictions[m].context for m in known], dtype=np.int64)
            kept.append(
                _Batch(
                    start_s=now_s,
                    models=tuple(known),
                    contexts=np.clip(context, 0, CONTEXTS - 1),
                    bins=_bins(raw),
                    raw=raw,
                    end_s=now_s + np.nan_to_num(window, nan=0.0, posinf=0.0),
                )
            )
        return Calibration(
            trials=trials,
            hits=hits,
            raw_sum=raw_sum,
            last_s=now_s if self.last_s is None else max(self.last_s, now_s),
            pending=tuple(kept[-MAX_PENDING:]),
        )


class _Map:
    """A non-decreasing map of raw P: ``ys`` at the knots ``xs`` (0 and 1 included)."""

    def __init__(self, xs: FloatArray, ys: FloatArray) -> None:
        self.xs = np.maximum.accumulate(xs)  # ordered knots for interpolation
        self.ys = ys

    def __call__(self, raw: FloatArray) -> FloatArray:
        result: FloatArray = np.interp(raw, self.xs, self.ys)
        return result


def _fit(
    trials: FloatArray, hits: FloatArray, raw_sum: FloatArray, prior: _Map | None = None
) -> _Map:
    """The calibration map of one set of bins: each bin's hit rate shrunk by
    :data:`PRIOR_TRIALS` toward ``prior`` at the bin's mean raw P (the identity without one), made
    non-decreasing and interpolated."""
    centre = np.where(trials > 0, raw_sum / np.maximum(trials, 1e-12), _MIDPOINTS)
    toward = centre if prior is None else prior(centre)
    rate = (hits + PRIOR_TRIALS * toward) / (trials + PRIOR_TRIALS)
    # Order is enforced with the evidence each bin has: a bin without outcomes follows its
    # neighbours rather than pulling them toward its prior.
    fitted = _pool_adjacent_violators(rate, trials + 1e-6)
    xs = np.concatenate([[0.0], centre, [1.0]])
    ys = np.concatenate([[0.0], fitted, [max(float(fitted[-1]), 0.0)]])
    return _Map(xs, ys)


def _pool_adjacent_violators(values: FloatArray, weights: FloatArray) -> FloatArray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([value, weight, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            total = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / total, total, c1 + c2])
    out: list[float] = []
    for value, _weight, count in blocks:
        out.extend([value] * int(count))
    return np.array(out, dtype=np.float64)
