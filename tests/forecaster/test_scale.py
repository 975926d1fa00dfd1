"""Fleet-scale storage and evaluation give the forecasts of the straightforward path, bitwise.

The oracle is the engine as it was before the scale work, rebuilt from switches: every history row
in float32 (no narrow tiers), all series evaluated in one pass (no chunks), the pooled GBM fitted
on features computed for every series (then sampled), and P(active) from its own intermittent
estimate (not the candidate's), and pending forecasts of every candidate kept step by step.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from common.ids import ModelId
from forecaster import engine as engine_module
from forecaster import history as history_module
from forecaster.engine import AutoForecaster
from forecaster.history import TIERS, HistoryBuffer
from forecaster.models import gbm
from forecaster.models.base import RowSubset
from forecaster.types import SeriesBatch

DAY = 1440
LEVELS = (0.1, 0.5, 0.9)


def _fleet(models: int, steps: int, seed: int) -> np.ndarray:
    """Small counts (one-byte rows), large ones (two-byte rows), Prometheus-like fractions
    (float32 rows), idle and gappy series, and a late jump that moves a row up a tier."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    volume = np.exp(rng.uniform(np.log(0.02), np.log(2000.0), models))
    shape = 1 + 0.6 * np.cos(2 * np.pi * (t[None, :] / DAY - rng.uniform(0, 1, models)[:, None]))
    counts = rng.poisson(volume[:, None] * shape).astype(np.float64)
    counts[::7] = np.round(counts[::7] * 1.37, 3)  # rates times the step: not integers
    counts[1::11, : steps // 3] = np.nan  # joined late
    counts[2::13] = np.where(rng.random(counts[2::13].shape) < 0.05, np.nan, counts[2::13])
    counts[3::17, -DAY // 2 :] *= 400  # a small model that grows past one byte
    return counts


def _old_fit(
    self: gbm.GradientBoostedQuantile,
    history: gbm.HistoryView,
    origins: list[int],
    horizon: int,
    calendar: gbm.Calendar,
) -> None:
    """The pooled GBM's fit before the scale work: features for every series, then a sample."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(self.seed)
    per_origin = max(1, self.max_rows // max(1, len(origins)))
    blocks_x, blocks_y = [], []
    for origin in origins:
        x, scale = gbm.features(history, origin, horizon, calendar)
        actual = history.gather(np.arange(horizon, dtype=np.int64), end=origin + horizon)
        y = (actual / scale[:, None]).reshape(-1)
        keep = np.flatnonzero(np.isfinite(y))
        if keep.size > per_origin:
            keep = rng.choice(keep, per_origin, replace=False)
        blocks_x.append(x[keep])
        blocks_y.append(y[keep])
    if not blocks_x or sum(block.size for block in blocks_y) < 50 or history.size == 0:
        return
    model = HistGradientBoostingRegressor(
        loss="quantile",
        quantile=self.quantile,
        max_iter=80,
        max_leaf_nodes=15,
        learning_rate=0.1,
        random_state=self.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(np.concatenate(blocks_x), np.concatenate(blocks_y))
    self._model = model
    self.calendar = calendar


class _Straightforward(AutoForecaster):
    """P(active) from the engine's own estimate, never the intermittent candidate's; pending
    forecasts kept step by step for every candidate."""

    @staticmethod
    def _flat_candidates(current: np.ndarray) -> np.ndarray:
        return np.zeros(current.shape[0], dtype=np.bool_)

    def _points_and_estimate(self, end: int, horizon: int):  # type: ignore[no-untyped-def]
        return super()._points_and_estimate(end, horizon)[0], None


def _run(engine: AutoForecaster, counts: np.ndarray, ids: tuple[ModelId, ...], history: int):
    engine.observe(SeriesBatch(ids, 0.0, 60.0, counts[:, :history]))
    out = []
    for column in range(history, counts.shape[1] + 1):
        if column > history:
            engine.observe(
                SeriesBatch(ids, (column - 1) * 60.0, 60.0, counts[:, column - 1 : column])
            )
        out.append(engine.forecast(horizon_steps=40, quantiles=LEVELS))
    return out


def test_a_small_fleet_forecasts_exactly_as_the_straightforward_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models, history = 120, 3 * DAY
    counts = _fleet(models, history + 4, seed=3)
    ids = tuple(ModelId(f"m{i:03d}") for i in range(models))
    # Several history blocks and chunks, the last of each partial.
    monkeypatch.setattr(history_module, "BLOCK_ROWS", 32)
    monkeypatch.setattr(engine_module, "CHUNK_ROWS", 48)
    engine = AutoForecaster(
        step_s=60, history_window_s=3 * 86400, refit_series_origins_per_call=900
    )
    scaled = _run(engine, counts, ids, history)
    assert min(engine.history.tier_counts()) > 0  # every tier was exercised

    monkeypatch.setattr(engine_module, "CHUNK_ROWS", 10**9)
    monkeypatch.setattr(history_module, "_fits", lambda values, tier: np.zeros(len(values), bool))
    monkeypatch.setattr(gbm.GradientBoostedQuantile, "fit", _old_fit)
    oracle = _Straightforward(
        step_s=60, history_window_s=3 * 86400, refit_series_origins_per_call=900
    )
    plain = _run(oracle, counts, ids, history)
    assert oracle.history.tier_counts() == (0, 0, models)
    assert oracle.gbm.fitted == engine.gbm.fitted

    for got, want in zip(scaled, plain, strict=True):
        for model in ids:
            a, b = got[model], want[model]
            assert a.method == b.method, model
            for name in ("mean", "values", "p_active"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), (model, name)


def _dense_gather(dense: np.ndarray, start: int, end: int, as_of: int, offsets: np.ndarray):
    steps = as_of + offsets
    ok = (steps >= start) & (steps < min(as_of, end))
    out = np.full((dense.shape[0], offsets.size), np.nan)
    out[:, ok] = dense[:, steps[ok]]
    return out


def test_history_tiers_read_back_what_was_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "BLOCK_ROWS", 16)
    rng = np.random.default_rng(7)
    capacity, total = 40, 400
    buffer = HistoryBuffer(step_s=60, capacity_steps=capacity)
    ids = [ModelId(f"m{i}") for i in range(70)]
    dense = np.full((len(ids), total), np.nan, dtype=np.float32)
    end = 0
    for _ in range(60):
        chosen = np.sort(rng.choice(len(ids), int(rng.integers(1, len(ids))), replace=False))
        steps = int(rng.integers(1, 12))
        begin = max(0, end - int(rng.integers(0, 8)))  # overlaps: later values win
        values = rng.poisson(3, (chosen.size, steps)).astype(np.float64)
        for share, value in ((0.1, np.nan), (0.01, 300.0), (0.005, 70000.0), (0.005, 2.5)):
            values[rng.random(values.shape) < share] = value
        buffer.extend(SeriesBatch(tuple(ids[i] for i in chosen), begin * 60.0, 60.0, values))
        if begin + steps > end:
            dense[:, end : begin + steps] = np.nan  # models absent from a batch read missing
            end = begin + steps
        dense[np.ix_(chosen, np.arange(begin, begin + steps))] = values
        start = max(0, end - capacity)
        order = [ids.index(model) for model in buffer.models]  # rows in order of arrival
        for offsets in (np.arange(-capacity, 0), np.array([-3, -30, -7, 2])):
            for as_of in (end, end - 5):
                want = _dense_gather(dense, start, end, as_of, offsets)[order]
                got = buffer.gather(offsets, end=as_of)
                assert np.array_equal(got, want, equal_nan=True)
                size = len(order)
                for rows in (np.arange(size // 4, size - 2), np.array([0, size // 2, size - 1])):
                    got = RowSubset(buffer, rows).gather(offsets, end=as_of)
                    assert np.array_equal(got, want[rows], equal_nan=True)
    assert min(buffer.tier_counts()) > 0


def test_small_counts_take_one_byte_per_step() -> None:
    """Memory shape: an idle-to-light fleet costs a byte per model-step; wider rows 4 more."""
    buffer = HistoryBuffer(step_s=60, capacity_steps=1000)
    counts = np.random.default_rng(0).poisson(2.0, (3000, 1000)).astype(np.float64)
    counts[:100, -1] = 0.5
    buffer.extend(SeriesBatch(tuple(ModelId(f"m{i}") for i in range(3000)), 0.0, 60.0, counts))
    assert buffer.tier_counts() == (2900, 0, 100)
    assert buffer.nbytes() == 3000 * 1000 + 100 * 1000 * TIERS[2].itemsize
