"""Live forecast quality per model, and the gate that sends a badly forecast model back to reactive.

Owns: pairing each model's one-step-ahead forecast with the actual count once that step is
observed, rolling error and under-forecast rate over a window, and the gate's verdict. Pure: no
clock, no I/O; the daemon feeds it forecasts and actuals keyed by step start (epoch seconds).

Error measure: mean |actual - forecast mean| / mean actual over the window (a WAPE); a model with
no traffic in the window has error 0 when the forecast was ~0 too. Under-forecast rate: the share
of steps whose actual exceeded the planning-quantile forecast (for a calibrated p90, about 0.1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

from common.ids import ModelId


@dataclass(frozen=True, slots=True)
class Quality:
    """A model's live forecast quality over the window."""

    steps: int
    error_ratio: float
    under_forecast_ratio: float


@dataclass(slots=True)
class _ModelTrack:
    pending: dict[float, tuple[float, float]] = field(default_factory=dict)
    errors: deque[float] = field(default_factory=deque)
    actuals: deque[float] = field(default_factory=deque)
    under: deque[bool] = field(default_factory=deque)


class LiveAccuracy:
    """Tracks one-step-ahead forecast quality for every model over the last ``window_steps``."""

    def __init__(self, *, window_steps: int, max_pending: int = 64) -> None:
        self._window = window_steps
        self._max_pending = max_pending
        self._tracks: dict[ModelId, _ModelTrack] = {}
        self._pending_starts: dict[float, int] = {}
        """How many models have a forecast waiting for each step start."""

    def record_forecast(
        self, model: ModelId, *, step_start_s: float, mean: float, planning_quantile: float
    ) -> None:
        """Remember what was forecast for the step starting at ``step_start_s``."""
        track = self._tracks.setdefault(model, _ModelTrack())
        if step_start_s not in track.pending:
            self._pending_starts[step_start_s] = self._pending_starts.get(step_start_s, 0) + 1
        track.pending[step_start_s] = (mean, planning_quantile)
        if len(track.pending) > self._max_pending:  # actuals never came (a gap): drop the oldest
            oldest = min(track.pending)
            del track.pending[oldest]
            self._settled(oldest)

    def has_pending(self, step_start_s: float) -> bool:
        """Whether any model has a forecast waiting for the step starting at ``step_start_s``."""
        return step_start_s in self._pending_starts

    def _settled(self, step_start_s: float) -> None:
        left = self._pending_starts.get(step_start_s, 0) - 1
        if left > 0:
            self._pending_starts[step_start_s] = left
        else:
            self._pending_starts.pop(step_start_s, None)

    def record_actual(self, model: ModelId, *, step_start_s: float, actual: float) -> None:
        """Score the forecast made for this step, if there was one; NaN actuals are ignored."""
        track = self._tracks.get(model)
        if track is None or actual != actual:
            return
        forecast = track.pending.pop(step_start_s, None)
        if forecast is None:
            return
        self._settled(step_start_s)
        mean, upper = forecast
        track.errors.append(abs(actual - mean))
        track.actuals.append(actual)
        track.under.append(actual > upper)
        while len(track.errors) > self._window:
            track.errors.popleft()
            track.actuals.popleft()
            track.under.popleft()

    def quality(self, model: ModelId) -> Quality:
        """The model's quality over the window (zeros when nothing was scored yet)."""
        track = self._tracks.get(model)
        if track is None or not track.errors:
            return _UNSCORED
        steps = len(track.errors)
        total_error = sum(track.errors)
        total_actual = sum(track.actuals)
        if total_actual > 0:
            error_ratio = total_error / total_actual
        else:  # an idle model: any forecast traffic counts as error, relative to one request
            error_ratio = total_error / steps
        return Quality(
            steps=steps,
            error_ratio=error_ratio,
            under_forecast_ratio=sum(track.under) / steps,
        )

    def forget(self, model: ModelId) -> None:
        """Drop a model that disappeared."""
        track = self._tracks.pop(model, None)
        for start in track.pending if track is not None else ():
            self._settled(start)

    def retain(self, models: Collection[ModelId]) -> None:
        """Forget every model not in ``models``."""
        for model in [m for m in self._tracks if m not in models]:
            self.forget(model)

    def models(self) -> list[ModelId]:
        """Models with any tracked state."""
        return list(self._tracks)


_UNSCORED = Quality(steps=0, error_ratio=0.0, under_forecast_ratio=0.0)
"""The quality of a model with nothing scored yet (frozen: one instance serves them all)."""


def passes_gate(
    quality: Quality, *, min_steps: int, max_error_ratio: float, max_under_forecast_ratio: float
) -> bool:
    """True when the model's forecast may drive actions; False sends it back to reactive.

    A model with fewer than ``min_steps`` scored steps passes: there is not yet evidence against
    it, and the reactive floor holds regardless.
    """
    if quality.steps < min_steps:
        return True
    return (
        quality.error_ratio <= max_error_ratio
        and quality.under_forecast_ratio <= max_under_forecast_ratio
    )


def gate_failure(
    quality: Quality,
    *,
    max_error_ratio: float,
    max_under_forecast_ratio: float,
    planning_quantile: float,
) -> str:
    """Which of the gate's limits ``quality`` broke, in words, e.g. ``forecast error 1.42x the
    mean actual (limit 1.00x) over the last 120 steps``."""
    broken: list[str] = []
    if quality.error_ratio > max_error_ratio:
        broken.append(
            f"forecast error {quality.error_ratio:.2f}x the mean actual "
            f"(limit {max_error_ratio:.2f}x)"
        )
    if quality.under_forecast_ratio > max_under_forecast_ratio:
        level = f"p{round(planning_quantile * 100)}"
        broken.append(
            f"{quality.under_forecast_ratio:.0%} of steps above the {level} forecast "
            f"(limit {max_under_forecast_ratio:.0%})"
        )
    what = " and ".join(broken) or "forecast too poor to act on"
    return f"{what} over the last {quality.steps} steps"
