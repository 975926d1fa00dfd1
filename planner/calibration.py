"""Calibration of P(request within the planning window) against what then happened. Pure.

The planner's P for an idle model is the largest of several estimates (the forecast's, the
model's idle-time record's), and the largest of several estimates is over-confident: on the
development traces, idle models given P between 0.6 and 0.8 had a request in the window 34 % of
the time on the Azure Functions sample and 6 % on ServeGen. Holds are ranked and priced by P, so
the planner learns the mapping from what it predicted to what happened:

- every plan records, for each idle model whose last request time is known, the raw P and the
  end of its window;
- once the model has a request after the prediction (a hit) or the window ends without one (a
  miss), the prediction is resolved into its bin of raw P (decayed counts, :data:`HALF_LIFE_S`);
- the calibrated P of a bin is its hit rate shrunk toward the raw P by :data:`PRIOR_TRIALS`
  pseudo-trials, made non-decreasing across bins (pool-adjacent-violators weighted by each
  bin's outcomes), and interpolated between bins, so the map keeps the order of raw P and is the
  identity before any outcome.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

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
"""Pseudo-trials at the raw P that each bin's hit rate is shrunk toward."""
HALF_LIFE_S = 12 * 3600.0
"""Half-life of resolved outcomes."""
MAX_PENDING = 256
"""Unresolved prediction batches kept; older ones are dropped unresolved (bounded memory)."""

_BINS = len(EDGES) - 1
_MIDPOINTS = (EDGES[:-1] + EDGES[1:]) / 2.0


@dataclass(frozen=True, slots=True)
class _Batch:
    """Predictions made at ``start_s``: per model, its bin, raw P and window end."""

    start_s: float
    models: tuple[ModelId, ...]
    bins: IntArray
    raw: FloatArray
    end_s: FloatArray


def _bins(p: FloatArray) -> IntArray:
    index: IntArray = np.clip(np.searchsorted(EDGES, p, side="right") - 1, 0, _BINS - 1).astype(
        np.int64
    )
    return index


@dataclass(frozen=True, slots=True)
class Calibration:
    """Resolved outcomes per bin and the predictions still open."""

    trials: FloatArray = field(default_factory=lambda: np.zeros(_BINS))
    hits: FloatArray = field(default_factory=lambda: np.zeros(_BINS))
    raw_sum: FloatArray = field(default_factory=lambda: np.zeros(_BINS))
    last_s: float | None = None
    pending: tuple[_Batch, ...] = ()

    def apply(self, raw: FloatArray) -> FloatArray:
        """Calibrated P for raw P values in ``[0, 1]`` (non-decreasing in raw P)."""
        centre = np.where(
            self.trials > 0, self.raw_sum / np.maximum(self.trials, 1e-12), _MIDPOINTS
        )
        rate = (self.hits + PRIOR_TRIALS * centre) / (self.trials + PRIOR_TRIALS)
        # Order is enforced with the evidence each bin has: a bin without outcomes follows its
        # neighbours rather than pulling them toward its raw P.
        fitted = _pool_adjacent_violators(rate, self.trials + 1e-6)
        xs = np.concatenate([[0.0], centre, [1.0]])
        ys = np.concatenate([[0.0], fitted, [max(float(fitted[-1]), 0.0)]])
        # Keep the knots strictly ordered for interpolation.
        xs = np.maximum.accumulate(xs)
        result: FloatArray = np.interp(np.clip(raw, 0.0, 1.0), xs, ys)
        return result

    def update(
        self,
        now_s: float,
        last_request_s: Mapping[ModelId, float],
        predictions: Mapping[ModelId, tuple[float, float]],
    ) -> Calibration:
        """Resolve open predictions against ``last_request_s`` (each model's latest request time)
        and open new ones: ``predictions`` maps a model to (raw P, window seconds from now).

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
                np.add.at(trials, batch.bins[done], 1.0)
                np.add.at(hits, batch.bins[done], hit[done].astype(np.float64))
                np.add.at(raw_sum, batch.bins[done], batch.raw[done])
            if not done.all():
                left = ~done
                kept.append(
                    _Batch(
                        start_s=batch.start_s,
                        models=tuple(m for m, keep in zip(batch.models, left, strict=True) if keep),
                        bins=batch.bins[left],
                        raw=batch.raw[left],
                        end_s=batch.end_s[left],
                    )
                )
        known = [model for model in predictions if model in last_request_s]
        if known:
            raw = np.clip(np.array([predictions[m][0] for m in known], dtype=np.float64), 0, 1)
            window = np.array([predictions[m][1] for m in known], dtype=np.float64)
            raw = np.nan_to_num(raw, nan=0.0)
            kept.append(
                _Batch(
                    start_s=now_s,
                    models=tuple(known),
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
