"""The forecaster's public types: a batch of history series in, one ``Forecast`` per model out.

Units: every series value is a *count of requests in one step* (a bucket of ``step_s`` seconds
starting at the step's timestamp). A Prometheus rate is multiplied by ``step_s`` at the source; a
trace is bucketed at the source. ``NaN`` marks a missing observation (a gap, a scrape failure),
distinct from an observed zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from common.errors import InvalidInput
from common.ids import ModelId

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SeriesBatch:
    """Dense history for many models on one regular time grid.

    Contract: ``counts.shape == (len(models), steps)``; column ``j`` covers
    ``[start_s + j*step_s, start_s + (j+1)*step_s)``; values are ``>= 0`` or ``NaN`` (missing).
    """

    models: tuple[ModelId, ...]
    start_s: float
    step_s: float
    counts: FloatArray

    def __post_init__(self) -> None:
        if self.step_s <= 0:
            raise InvalidInput(f"step_s must be > 0, got {self.step_s}")
        if self.counts.ndim != 2 or self.counts.shape[0] != len(self.models):
            raise InvalidInput(
                f"counts must have shape (models={len(self.models)}, steps), "
                f"got {self.counts.shape}"
            )
        if len(set(self.models)) != len(self.models):
            raise InvalidInput("model ids in a SeriesBatch must be unique")

    @property
    def steps(self) -> int:
        """Number of time steps (columns)."""
        return int(self.counts.shape[1])

    @property
    def end_s(self) -> float:
        """The end of the last step (exclusive): where the next batch starts."""
        return self.start_s + self.steps * self.step_s

    def row(self, model: ModelId) -> FloatArray:
        """The series of one model (a view, not a copy)."""
        row: FloatArray = self.counts[self.models.index(model)]
        return row


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast of one model's request counts for ``horizon`` steps after ``start_s``.

    Contract (checked at construction):
    - ``mean.shape == (horizon,)``; ``values.shape == (len(quantiles), horizon)``;
      ``p_active.shape == (horizon,)``; all finite, counts ``>= 0``, ``0 <= p_active <= 1``;
    - ``quantiles`` strictly increasing in (0, 1), rows of ``values`` non-decreasing across levels;
    - ``p_active[k]`` is P(at least one request in step k);
    - ``stale`` is true when the forecast was not refreshed in the latest cycle (source failed).
    """

    model: ModelId
    start_s: float
    step_s: float
    mean: FloatArray
    quantiles: tuple[float, ...]
    values: FloatArray
    p_active: FloatArray
    method: str
    stale: bool = False
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        horizon = self.mean.shape[0]
        if self.mean.ndim != 1:
            raise InvalidInput("Forecast.mean must be 1-D")
        if self.values.shape != (len(self.quantiles), horizon):
            raise InvalidInput(
                f"Forecast.values must be (quantiles={len(self.quantiles)}, horizon={horizon}), "
                f"got {self.values.shape}"
            )
        if self.p_active.shape != (horizon,):
            raise InvalidInput(f"Forecast.p_active must be ({horizon},), got {self.p_active.shape}")
        if list(self.quantiles) != sorted(set(self.quantiles)) or not all(
            0.0 < q < 1.0 for q in self.quantiles
        ):
            raise InvalidInput(f"quantile levels must be increasing in (0, 1): {self.quantiles}")
        for name, array in (
            ("mean", self.mean),
            ("values", self.values),
            ("p_active", self.p_active),
        ):
            if not np.all(np.isfinite(array)):
                raise InvalidInput(f"Forecast.{name} for {self.model} has non-finite values")
        if np.any(self.mean < 0) or np.any(self.values < 0):
            raise InvalidInput(f"Forecast for {self.model} has negative counts")
        if np.any(self.p_active < 0) or np.any(self.p_active > 1):
            raise InvalidInput(f"Forecast.p_active for {self.model} is outside [0, 1]")
        if len(self.quantiles) > 1 and np.any(np.diff(self.values, axis=0) < -1e-9):
            raise InvalidInput(f"Forecast quantiles for {self.model} cross")

    @property
    def horizon(self) -> int:
        """Number of forecast steps."""
        return int(self.mean.shape[0])

    def quantile(self, level: float) -> FloatArray:
        """Counts per step at quantile ``level`` (must be one of ``quantiles``)."""
        try:
            row: FloatArray = self.values[self.quantiles.index(level)]
        except ValueError:
            raise InvalidInput(
                f"quantile {level} not forecast for {self.model}; have {self.quantiles}"
            ) from None
        return row

    def rate_per_s(self, level: float | None = None) -> FloatArray:
        """Requests per second per step: the mean, or quantile ``level``."""
        counts = self.mean if level is None else self.quantile(level)
        return counts / self.step_s

    def p_any_within(self, steps: int) -> float:
        """P(at least one request in the first ``steps`` steps), assuming independent steps."""
        window = self.p_active[: max(0, steps)]
        return float(1.0 - np.prod(1.0 - window))


def forecasts_from_arrays(
    models: Sequence[ModelId],
    *,
    start_s: float,
    step_s: float,
    mean: FloatArray,
    quantiles: tuple[float, ...],
    values: FloatArray,
    p_active: FloatArray,
    methods: Sequence[str],
    stale: bool = False,
) -> dict[ModelId, Forecast]:
    """Build one :class:`Forecast` per model from stacked arrays, checking the contract once.

    ``mean`` and ``p_active`` are ``(models, horizon)``, ``values`` is
    ``(models, len(quantiles), horizon)``. Every check of :class:`Forecast` is applied to the whole
    stack at once (vectorised), then the instances are built without re-checking each one: the
    same contract, at a fraction of the cost for thousands of models.
    """
    n = len(models)
    if mean.ndim != 2 or mean.shape[0] != n:
        raise InvalidInput(f"mean must be (models={n}, horizon), got {mean.shape}")
    horizon = mean.shape[1]
    if values.shape != (n, len(quantiles), horizon):
        raise InvalidInput(f"values must be ({n}, {len(quantiles)}, {horizon}), got {values.shape}")
    if p_active.shape != (n, horizon):
        raise InvalidInput(f"p_active must be ({n}, {horizon}), got {p_active.shape}")
    if len(methods) != n:
        raise InvalidInput(f"methods must name one method per model ({n}), got {len(methods)}")
    if list(quantiles) != sorted(set(quantiles)) or not all(0.0 < q < 1.0 for q in quantiles):
        raise InvalidInput(f"quantile levels must be increasing in (0, 1): {quantiles}")
    for name, array in (("mean", mean), ("values", values), ("p_active", p_active)):
        bad = ~np.isfinite(array).reshape(n, -1).all(axis=1)
        if bad.any():
            raise InvalidInput(f"Forecast.{name} for {models[int(np.argmax(bad))]} is not finite")
    negative = (mean < 0).any(axis=1) | (values < 0).reshape(n, -1).any(axis=1)
    if negative.any():
        raise InvalidInput(f"Forecast for {models[int(np.argmax(negative))]} has negative counts")
    outside = ((p_active < 0) | (p_active > 1)).any(axis=1)
    if outside.any():
        raise InvalidInput(
            f"Forecast.p_active for {models[int(np.argmax(outside))]} is outside [0, 1]"
        )
    if len(quantiles) > 1:
        crossing = (np.diff(values, axis=1) < -1e-9).reshape(n, -1).any(axis=1)
        if crossing.any():
            raise InvalidInput(f"Forecast quantiles for {models[int(np.argmax(crossing))]} cross")
    out: dict[ModelId, Forecast] = {}
    new = object.__new__
    assign = object.__setattr__
    for row, model in enumerate(models):
        forecast = new(Forecast)
        assign(forecast, "model", model)
        assign(forecast, "start_s", start_s)
        assign(forecast, "step_s", step_s)
        assign(forecast, "mean", mean[row])
        assign(forecast, "quantiles", quantiles)
        assign(forecast, "values", values[row])
        assign(forecast, "p_active", p_active[row])
        assign(forecast, "method", methods[row])
        assign(forecast, "stale", stale)
        assign(forecast, "notes", ())
        out[model] = forecast
    return out


class ForecastEngine(Protocol):
    """What the daemon, the simulator and the CLI drive: fold in new history, forecast everyone.

    Contract: ``observe`` takes batches on the engine's step grid in time order (a batch may
    overlap the previous one; later values win); ``forecast`` returns one :class:`Forecast` per
    known model starting at the end of the last observed step, never with NaN, also for models with
    less than one season of history (fallback models). Both are cheap per call: full refits are
    spread across calls, not done in every one.
    """

    def observe(self, batch: SeriesBatch) -> None:
        """Fold in new history."""
        ...

    def forecast(
        self, *, horizon_steps: int, quantiles: tuple[float, ...]
    ) -> dict[ModelId, Forecast]:
        """One forecast per known model for ``horizon_steps`` steps at the given levels."""
        ...
