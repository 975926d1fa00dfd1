"""Per-series model selection by rolling-origin evaluation on the planner's loss.

Each candidate's forecasts made at past origins are scored, when the actuals arrive, with the
pinball loss at the planning quantile (under-forecasting costs ``q``, over-forecasting ``1-q``)
plus the pinball loss of its point forecast at 0.5 (half the absolute error): the planner sizes
for the quantile, and the point forecast (the mean the planner and dashboards show) must be good
too. An exponentially weighted mean per (candidate, series), decaying per scored step, ranks
them. A series picks the candidate with the lowest loss among those it has enough history for; a
tie or no evidence falls back to the first eligible candidate in the preference order given.
The point forecast (``Forecast.mean``) can be chosen on its own loss (absolute error) alone: the
quantiles serve the planner, the mean serves people and error metrics.
Must not: do I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from forecaster.types import FloatArray

BoolArray = NDArray[np.bool_]


def pinball(actual: FloatArray, predicted: FloatArray, level: float) -> FloatArray:
    """Pinball (quantile) loss of ``predicted`` at ``level`` against ``actual``, elementwise."""
    diff = actual - predicted
    out: FloatArray = np.maximum(level * diff, (level - 1.0) * diff)
    return out


class Selector:
    """Exponentially weighted pinball loss per candidate and series, and the choice it implies."""

    def __init__(self, *, candidates: int, level: float, decay: float = 0.0002) -> None:
        self.candidates = candidates
        self.level = level
        self.decay = decay
        self.loss: NDArray[np.float64] = np.zeros((candidates, 0))
        self.weight: NDArray[np.float64] = np.zeros((candidates, 0))
        self.point_loss: NDArray[np.float64] = np.zeros((candidates, 0))

    def grow(self, models: int) -> None:
        """Make room for ``models`` series."""
        extra = models - self.loss.shape[1]
        if extra > 0:
            self.loss = np.concatenate([self.loss, np.zeros((self.candidates, extra))], axis=1)
            self.weight = np.concatenate([self.weight, np.zeros((self.candidates, extra))], axis=1)
            pad = np.zeros((self.candidates, extra))
            self.point_loss = np.concatenate([self.point_loss, pad], axis=1)

    def update(
        self,
        actual: FloatArray,
        point: FloatArray,
        predicted: FloatArray,
        *,
        rows: slice | None = None,
    ) -> None:
        """Score forecasts ``(candidates, models, steps)`` against ``actual (models, steps)``.

        ``point`` is each candidate's point forecast, ``predicted`` its planning-quantile
        forecast. NaN entries (missing actuals, ineligible candidates) are skipped. With
        ``rows``, the arrays hold those series only (series are scored independently, so a
        fleet can be scored a chunk at a time with the same result).
        """
        part = slice(None) if rows is None else rows
        loss, point_loss, weight = (a[:, part] for a in (self.loss, self.point_loss, self.weight))
        point_losses = pinball(actual[None, :, :], point, 0.5)
        losses = pinball(actual[None, :, :], predicted, self.level) + point_losses
        finite = np.isfinite(losses)
        count = finite.sum(axis=2)
        has = count > 0
        mean = np.where(has, np.where(finite, losses, 0.0).sum(axis=2) / np.maximum(count, 1), 0)
        step_rate = 1.0 - (1.0 - self.decay) ** count
        rate = np.where(has, np.maximum(step_rate, count / np.maximum(count + weight, 1)), 0.0)
        loss = (1.0 - rate) * loss + rate * mean
        point_mean = np.where(
            has, np.where(finite, point_losses, 0.0).sum(axis=2) / np.maximum(count, 1), 0
        )
        point_loss = (1.0 - rate) * point_loss + rate * point_mean
        weight = weight + count
        if rows is None:
            self.loss, self.point_loss, self.weight = loss, point_loss, weight
        else:
            self.loss[:, rows], self.point_loss[:, rows], self.weight[:, rows] = (
                loss,
                point_loss,
                weight,
            )

    def choose(
        self,
        eligible: BoolArray,
        *,
        min_evidence: float = 10.0,
        preferred: int | None = None,
        margin: float = 0.0,
        point: bool = False,
    ) -> NDArray[np.int64]:
        """Index of the chosen candidate per series; ``eligible`` is ``(candidates, models)``.

        Candidates with less than ``min_evidence`` scored steps are only chosen when no eligible
        candidate has evidence (then the first eligible one in preference order is used). The
        ``preferred`` candidate (the combination) wins unless another beats its loss by more than
        ``margin`` (a share; a tie goes to ``preferred``): a single model must be clearly better
        to be trusted alone. With ``point=True`` the ranking uses the point forecast's loss only
        (absolute error).
        """
        trusted = eligible & (self.weight >= min_evidence)
        score = np.where(trusted, self.point_loss if point else self.loss, np.inf)
        if preferred is not None:
            score[preferred] = score[preferred] * (1.0 - margin)
        best = np.argmin(score, axis=0)
        if preferred is not None:
            # Not beaten by more than the margin means the preferred candidate wins, ties
            # included: on a flat series every candidate's loss is exactly 0, and argmin's first
            # index (the naive level) would then copy a one-step dip over the whole horizon.
            columns = np.arange(score.shape[1])
            holds = trusted[preferred] & (score[preferred] <= score[best, columns])
            best = np.where(holds, preferred, best)
        any_trusted = trusted.any(axis=0)
        first_eligible = np.argmax(eligible, axis=0)
        out: NDArray[np.int64] = np.where(any_trusted, best, first_eligible).astype(np.int64)
        return out
