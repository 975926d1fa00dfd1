"""In-memory per-model history: a ring buffer of the last ``capacity_steps`` steps for every model.

Owns: folding :class:`SeriesBatch` es into fixed-capacity rows, kept in blocks of ``BLOCK_ROWS``
models so that adding models never copies the whole history; new models get new rows;
overlapping steps are overwritten, later values win; skipped steps are NaN; and gathering columns
at offsets relative to an "as-of" end step (as float64), so models can be evaluated at past
origins without copying the window. Must not: do I/O or forecasting.

Storage is lossless against float32 rows and as narrow as each row allows. Request counts per
step are mostly small integers (a fleet of 100,000 adapters is mostly idle or light), so a row
starts as one byte per step (counts 0..254, code 255 = missing); a row that receives an integer
count above 254 moves to two bytes per step (0..65534), and one that receives anything else (a
Prometheus rate times the step is rarely an integer) to float32. A row only ever moves up. At
100,000 models x 14 days of minutes a float32 matrix is 8.1 GB; one byte per step is 2.0 GB.

Steps are absolute integers: step ``s`` covers ``[origin_s + s*step_s, origin_s + (s+1)*step_s)``
where ``origin_s`` is the start of the first batch seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.errors import InvalidInput
from common.ids import ModelId
from forecaster.types import FloatArray, SeriesBatch

IntArray = NDArray[np.int64]
BLOCK_ROWS = 1024

TIERS: tuple[np.dtype[np.generic], ...] = (
    np.dtype(np.uint8),
    np.dtype(np.uint16),
    np.dtype(np.float32),
)
"""Row storage, narrowest first. Integer tiers hold exact counts ``0 .. max - 1``; their largest
code means "missing" (NaN)."""
_MISSING = (255, 65535)


@dataclass(slots=True)
class _Block:
    """``BLOCK_ROWS`` models' rows: every row in the one-byte array (``rows[0]``), and the rows
    that moved to a wider tier also in that tier's array (``rows[t]``, local row ``members[t]``);
    a row's values are read from the widest tier holding it."""

    rows: list[NDArray[Any]]
    members: list[IntArray] = field(default_factory=lambda: [np.zeros(0, np.int64)] * 2)


def _fits(values: NDArray[np.float32], tier: int) -> NDArray[np.bool_]:
    """Per row: whether every value of ``values (rows, steps)`` is stored exactly by ``tier``."""
    if tier == len(TIERS) - 1:
        return np.ones(values.shape[0], dtype=np.bool_)
    limit = _MISSING[tier]
    ok = np.isnan(values) | ((values >= 0) & (values < limit) & (values == np.rint(values)))
    out: NDArray[np.bool_] = ok.all(axis=1)
    return out


def _encode(values: NDArray[np.float32], tier: int) -> NDArray[Any]:
    dtype = TIERS[tier]
    if tier == len(TIERS) - 1:
        return values.astype(dtype, copy=False)
    out: NDArray[Any] = np.where(np.isnan(values), _MISSING[tier], values).astype(dtype)
    return out


def _decode_into(out: FloatArray, codes: NDArray[Any]) -> None:
    """One-byte codes into ``out`` (a cast, then NaN where missing: twice as fast as a lookup)."""
    np.copyto(out, codes, casting="unsafe")
    missing = codes == _MISSING[0]
    if missing.any():
        np.copyto(out, np.nan, where=missing)


def _decode(codes: NDArray[Any], tier: int) -> FloatArray:
    values = codes.astype(np.float64)
    if tier < len(TIERS) - 1:
        np.copyto(values, np.nan, where=codes == _MISSING[tier])
    return values


class HistoryBuffer:
    """Fixed-capacity history of many models on one step grid (see the module docstring)."""

    def __init__(self, *, step_s: float, capacity_steps: int) -> None:
        if capacity_steps < 2:
            raise InvalidInput(f"history capacity must be >= 2 steps, got {capacity_steps}")
        self.step_s = float(step_s)
        self.capacity = int(capacity_steps)
        self.models: list[ModelId] = []
        self._index: dict[ModelId, int] = {}
        self._blocks: list[_Block] = []
        self._tier: NDArray[np.int8] = np.zeros(0, dtype=np.int8)
        """Per model: the widest tier holding its row."""
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

    def tier_counts(self) -> tuple[int, ...]:
        """How many models' rows each tier of :data:`TIERS` holds (for metrics and benchmarks)."""
        counts = np.bincount(self._tier, minlength=len(TIERS))
        return tuple(int(c) for c in counts)

    def nbytes(self) -> int:
        """Bytes held by the rows."""
        return sum(array.nbytes for block in self._blocks for array in block.rows)

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
                for tier, array in enumerate(block.rows):
                    array[:, columns] = _MISSING[tier] if tier < len(_MISSING) else np.nan
            self.end = stop
        keep_from = max(begin, self.end - self.capacity)
        values = np.asarray(batch.counts[:, keep_from - begin :], dtype=np.float32)
        values = np.where(values < 0, np.float32(np.nan), values)
        columns = np.arange(keep_from, stop) % self.capacity
        which = rows // BLOCK_ROWS
        for index in np.unique(which):
            members = np.flatnonzero(which == index)
            self._write(int(index), rows[members], values[members], columns)
        self.first = min(self.first, begin)
        observed = np.isfinite(values).any(axis=1)
        first_step = keep_from + np.argmax(np.isfinite(values), axis=1)
        current = self.first_seen[rows]
        updated = np.where(observed, np.minimum(current, first_step), current)
        self.first_seen[rows] = updated

    def _write(
        self, index: int, rows: IntArray, values: NDArray[np.float32], columns: IntArray
    ) -> None:
        """Write ``values`` of models ``rows`` (all in block ``index``) at ring ``columns``,
        moving rows to a wider tier first where a value needs it."""
        block = self._blocks[index]
        local = rows - index * BLOCK_ROWS
        need = np.zeros(rows.size, dtype=np.int8)
        for tier in range(len(TIERS) - 1):
            wider = need == tier
            wider[wider] = ~_fits(values[wider], tier)
            need[wider] = tier + 1
        current = self._tier[rows]
        target = np.maximum(current, need)
        moving = target > current
        if moving.any():
            self._promote(block, local[moving], current[moving], target[moving])
            self._tier[rows[moving]] = target[moving]
        for tier in range(len(TIERS)):
            chosen = target == tier
            if not chosen.any():
                continue
            at = local[chosen]
            if tier > 0:
                at = np.searchsorted(block.members[tier - 1], at)
            block.rows[tier][np.ix_(at, columns)] = _encode(values[chosen], tier)

    def _promote(
        self, block: _Block, local: IntArray, current: NDArray[np.int8], target: NDArray[np.int8]
    ) -> None:
        """Copy rows ``local`` of ``block`` from their ``current`` tier to their ``target`` one."""
        for tier in range(1, len(TIERS)):
            moving = target == tier
            if not moving.any():
                continue
            decoded = np.empty((int(moving.sum()), self.capacity), dtype=np.float32)
            for source in range(tier):
                from_here = current[moving] == source
                if not from_here.any():
                    continue
                at = local[moving][from_here]
                if source > 0:
                    at = np.searchsorted(block.members[source - 1], at)
                decoded[from_here] = _decode(block.rows[source][at], source)
            merged = np.concatenate([block.members[tier - 1], local[moving]])
            order = np.argsort(merged, kind="stable")
            stacked = np.concatenate([block.rows[tier], _encode(decoded, tier)])
            block.rows[tier] = np.ascontiguousarray(stacked[order])
            block.members[tier - 1] = merged[order]
        for tier in range(1, len(TIERS) - 1):
            # Rows that moved on from an intermediate tier leave it.
            left = local[(current == tier) & (target > tier)]
            if left.size:
                keep = ~np.isin(block.members[tier - 1], left)
                block.rows[tier] = np.ascontiguousarray(block.rows[tier][keep])
                block.members[tier - 1] = block.members[tier - 1][keep]

    def _rows_for(self, models: tuple[ModelId, ...]) -> IntArray:
        new = [model for model in models if model not in self._index]
        if new:
            for model in new:
                self._index[model] = len(self.models)
                self.models.append(model)
            # Only the last block is ever resized (at most BLOCK_ROWS rows are copied).
            while self._rows_held() < len(self.models):
                missing = len(self.models) - self._rows_held()
                if self._blocks and self._blocks[-1].rows[0].shape[0] < BLOCK_ROWS:
                    last = self._blocks[-1]
                    grow = min(BLOCK_ROWS - last.rows[0].shape[0], missing)
                    extra = np.full((grow, self.capacity), _MISSING[0], dtype=TIERS[0])
                    last.rows[0] = np.concatenate([last.rows[0], extra], axis=0)
                else:
                    rows_ = min(BLOCK_ROWS, missing)
                    self._blocks.append(
                        _Block(
                            rows=[
                                np.full((rows_, self.capacity), _MISSING[0], dtype=TIERS[0]),
                                *(np.zeros((0, self.capacity), dtype=t) for t in TIERS[1:]),
                            ],
                            members=[np.zeros(0, dtype=np.int64) for _ in TIERS[1:]],
                        )
                    )
            never = np.full(len(new), np.iinfo(np.int64).max // 4, dtype=np.int64)
            self.first_seen = np.concatenate([self.first_seen, never])
            self._tier = np.concatenate([self._tier, np.zeros(len(new), dtype=np.int8)])
        return np.fromiter((self._index[m] for m in models), dtype=np.int64, count=len(models))

    def _rows_held(self) -> int:
        return sum(block.rows[0].shape[0] for block in self._blocks)

    def gather(
        self, offsets: IntArray, *, end: int | None = None, rows: IntArray | None = None
    ) -> FloatArray:
        """Values at absolute steps ``end + offsets`` for every model (or the models ``rows``,
        ascending), shape ``(models, offsets)``.

        Steps outside the held window (too old, or at/after ``end``) read NaN.
        """
        as_of = self.end if end is None else end
        steps = as_of + np.asarray(offsets, dtype=np.int64)
        valid = (steps >= self.start) & (steps < min(as_of, self.end))
        columns = np.where(valid, steps, 0) % self.capacity
        out = np.empty((self.size if rows is None else rows.size, columns.size), dtype=np.float64)
        # A run of consecutive columns (the usual "last k steps", unless it wraps around the
        # ring) is a slice; anything else goes through np.take, which is several times faster
        # than fancy indexing a row range of these wide blocks.
        start = int(columns[0]) if columns.size else 0
        run = columns.size > 0 and bool(np.all(columns == start + np.arange(columns.size)))

        def read(array: NDArray[Any], local: IntArray | None = None) -> NDArray[Any]:
            if local is not None:
                if run:
                    return array[local, start : start + columns.size]
                picked: NDArray[Any] = array[np.ix_(local, columns)]
                return picked
            if run:
                return array[:, start : start + columns.size]
            return np.take(array, columns, axis=1)

        contiguous = rows is not None and rows.size > 0 and rows[-1] - rows[0] + 1 == rows.size
        if rows is None or contiguous:
            # All models, or a contiguous range of them (a chunk of series): block slices.
            low = 0 if rows is None else int(rows[0])
            high = self.size if rows is None else int(rows[-1]) + 1
            for index in range(low // BLOCK_ROWS, -(-high // BLOCK_ROWS)):
                block = self._blocks[index]
                first = index * BLOCK_ROWS
                begin, stop = max(low, first) - first, min(high, first + BLOCK_ROWS) - first
                target = out[first + begin - low : first + stop - low]
                _decode_into(target, read(block.rows[0][begin:stop]))
                for tier in range(1, len(TIERS)):
                    members = block.members[tier - 1]
                    inside = (members >= begin) & (members < stop)
                    if not inside.any():
                        continue
                    if inside.all():
                        codes = read(block.rows[tier])
                    else:
                        codes = read(block.rows[tier], np.flatnonzero(inside))
                    target[members[inside] - begin] = _decode(codes, tier)
        else:
            assert rows is not None
            which = rows // BLOCK_ROWS
            for index in np.unique(which).tolist():
                block = self._blocks[index]
                at = np.flatnonzero(which == index)
                local = rows[at] - index * BLOCK_ROWS
                out[at] = _decode(read(block.rows[0], local), 0)
                for tier in range(1, len(TIERS)):
                    members = block.members[tier - 1]
                    if not members.size:
                        continue
                    position = np.minimum(np.searchsorted(members, local), members.size - 1)
                    hit = members[position] == local
                    if hit.any():
                        out[at[hit]] = _decode(read(block.rows[tier], position[hit]), tier)
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
