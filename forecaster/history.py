"""In-memory per-model history: a ring buffer of the last ``capacity_steps`` steps for every model.

Owns: folding :class:`SeriesBatch` es into fixed-size float32 rows of ``capacity`` steps, kept in
blocks of ``BLOCK_ROWS`` models so that adding models never copies the whole history (at 10,000
models x 14 days it is 0.8 GB); new models get new rows; overlapping steps are overwritten, later
values win; skipped steps are NaN,
and gathering columns at offsets relative to an "as-of" end step, so models can be evaluated at past
origins without copying the window. Must not: do I/O or forecasting.

Steps are absolute integers: step ``s`` covers ``[origin_s + s*step_s, origin_s + (s+1)*step_s)``
where ``origin_s`` is the start of the first batch seen.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.types import FloatArray, SeriesBatch

IntArray = NDArray[np.int64]
BLOCK_ROWS = 1024


class HistoryBuffer:
    """Dense, fixed-capacity history of many models on one step grid."""

    def __init__(self, *, step_s: float, capacity_steps: int) -> None:
        if capacity_steps < 2:
            raise InvalidInput(f"history capacity must be >= 2 steps, got {capacity_steps}")
        self.step_s = float(step_s)
        self.capacity = int(capacity_steps)
        self.models: list[ModelId] = []
        self._index: dict[ModelId, int] = {}
        self._blocks: list[NDArray[np.float32]] = []
        self.origin_s: float | None = None
        self.end = 0
        """Absolute step just after the newest step held."""
        self.first = 0
        """Absolute step of the oldest step ever observed (may have left the buffer)."""
        self.first_seen: IntArray = np.zeros(0, dtype=np.int64)
        """Per model: the absolute step of its first observation."""

    @property
    def size(self) -> int:
        """Number of models."""
        return len(self.models)

    @property
    def start(self) -> int:
        """Absolute step of the oldest step still held."""
        return max(self.first, self.end - self.capacity)

    @property
    def end_s(self) -> float:
        """Wall time (epoch seconds) at the end of the newest step."""
        return (self.origin_s or 0.0) + self.end * self.step_s

    def step_at(self, time_s: float) -> int:
        """Absolute step index of the step starting at ``time_s`` (must be on the grid)."""
        assert self.origin_s is not None
        position = (time_s - self.origin_s) / self.step_s
        rounded = round(position)
        if abs(position - rounded) > 1e-6:
            raise InvalidInput(
                f"batch start {time_s} is not on the engine's {self.step_s:g} s step grid "
                f"(origin {self.origin_s})"
            )
        return int(rounded)

    def extend(self, batch: SeriesBatch) -> None:
        """Fold ``batch`` in. Models absent from it read NaN (missing) for its new steps."""
        if abs(batch.step_s - self.step_s) > 1e-9:
            raise InvalidInput(
                f"batch step {batch.step_s:g} s differs from the engine's step {self.step_s:g} s"
            )
        if self.origin_s is None:
            self.origin_s = float(batch.start_s)
            self.end = 0
            self.first = 0
        rows = self._rows_for(batch.models)
        begin = self.step_at(batch.start_s)
        stop = begin + batch.steps
        if stop <= self.end - self.capacity or batch.steps == 0:
            return  # entirely older than what is kept
        if begin < self.first and self.end == 0:
            self.first = begin
        if stop > self.end:
            # Clear the columns that the new steps reuse, so stale values never leak through.
            clear_from = max(self.end, stop - self.capacity)
            columns = np.arange(clear_from, stop) % self.capacity
            for block in self._blocks:
                block[:, columns] = np.nan
            self.end = stop
        keep_from = max(begin, self.end - self.capacity)
        values = np.asarray(batch.counts[:, keep_from - begin :], dtype=np.float32)
        values = np.where(values < 0, np.float32(np.nan), values)
        columns = np.arange(keep_from, stop) % self.capacity
        which = rows // BLOCK_ROWS
        for index in np.unique(which):
            members = np.flatnonzero(which == index)
            local = rows[members] - index * BLOCK_ROWS
            self._blocks[int(index)][np.ix_(local, columns)] = values[members]
        self.first = min(self.first, begin)
        observed = np.isfinite(values).any(axis=1)
        first_step = keep_from + np.argmax(np.isfinite(values), axis=1)
        current = self.first_seen[rows]
        updated = np.where(observed, np.minimum(current, first_step), current)
        self.first_seen[rows] = updated

    def _rows_for(self, models: tuple[ModelId, ...]) -> IntArray:
        new = [model for model in models if model not in self._index]
        if new:
            for model in new:
                self._index[model] = len(self.models)
                self.models.append(model)
            # Only the last block is ever resized (at most BLOCK_ROWS rows are copied).
            while self._rows_held() < len(self.models):
                missing = len(self.models) - self._rows_held()
                if self._blocks and self._blocks[-1].shape[0] < BLOCK_ROWS:
                    last = self._blocks[-1]
                    grow = min(BLOCK_ROWS - last.shape[0], missing)
                    extra = np.full((grow, self.capacity), np.nan, dtype=np.float32)
                    self._blocks[-1] = np.concatenate([last, extra], axis=0)
                else:
                    rows_ = min(BLOCK_ROWS, missing)
                    self._blocks.append(np.full((rows_, self.capacity), np.nan, dtype=np.float32))
            never = np.full(len(new), np.iinfo(np.int64).max // 4, dtype=np.int64)
            self.first_seen = np.concatenate([self.first_seen, never])
        return np.fromiter((self._index[m] for m in models), dtype=np.int64, count=len(models))

    def _rows_held(self) -> int:
        return sum(block.shape[0] for block in self._blocks)

    def gather(self, offsets: IntArray, *, end: int | None = None) -> FloatArray:
        """Values at absolute steps ``end + offsets`` for every model, shape ``(models, offsets)``.

        Steps outside the held window (too old, or at/after ``end``) read NaN.
        """
        as_of = self.end if end is None else end
        steps = as_of + np.asarray(offsets, dtype=np.int64)
        valid = (steps >= self.start) & (steps < min(as_of, self.end))
        columns = np.where(valid, steps, 0) % self.capacity
        out = np.empty((self.size, columns.size), dtype=np.float64)
        # A run of consecutive columns (the usual "last k steps", unless it wraps around the
        # ring) is a slice; anything else goes through np.take, which is several times faster
        # than fancy indexing a row range of these wide blocks.
        start = int(columns[0]) if columns.size else 0
        run = columns.size > 0 and bool(np.all(columns == start + np.arange(columns.size)))
        for index, block in enumerate(self._blocks):
            first = index * BLOCK_ROWS
            last = min(first + BLOCK_ROWS, self.size)
            rows = block[: last - first]
            if run:
                out[first:last] = rows[:, start : start + columns.size]
            else:
                out[first:last] = np.take(rows, columns, axis=1)
        if not valid.all():
            out[:, ~valid] = np.nan
        return out

    def window(self, length: int, *, end: int | None = None) -> FloatArray:
        """The last ``length`` steps before ``end`` in time order, shape ``(models, length)``."""
        return self.gather(np.arange(-length, 0, dtype=np.int64), end=end)

    def history_steps(self, *, end: int | None = None) -> IntArray:
        """Per model: how many steps of history it has before ``end`` (within the window)."""
        as_of = self.end if end is None else end
        begin = np.maximum(self.first_seen, self.start)
        out: IntArray = np.clip(as_of - begin, 0, None).astype(np.int64)
        return out
