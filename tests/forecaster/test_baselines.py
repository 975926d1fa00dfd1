"""The statsforecast baselines of ``prewarm backtest`` (:mod:`forecaster.baselines`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.errors import InvalidInput
from forecaster import baselines
from forecaster.backtest import run_backtest
from prewarm.cli.main import app
from tests.forecaster.conftest import synthetic_batch, write_trace


@pytest.mark.parametrize("name", baselines.NAMES)
def test_each_baseline_gives_finite_forecasts_of_the_right_shape(name: str) -> None:
    batch = synthetic_batch(models=2, days=2.5, step_s=600, sparse=True)
    origins = np.array([300, 310, 340], dtype=np.int64)
    run = baselines.run_baseline(
        name, batch.counts, step_s=600, train_end=300, origins=origins, horizon=3
    )
    assert run.point.shape == run.p90.shape == (2, 3, 3)
    assert np.isfinite(run.point).all()
    assert np.isfinite(run.p90).all()
    assert (run.point >= 0).all()
    assert (run.p90 >= run.point).all()
    # A daily cycle at 10-minute steps: 144 steps, two cycles in 300 steps; a week does not fit.
    assert not any("daily" in note for note in run.notes)
    if name not in baselines.INTERMITTENT:
        assert any("weekly season (1008 steps) skipped" in note for note in run.notes)


def test_intermittent_series_by_syntetos_boylan() -> None:
    train = np.array(
        [
            [3.0, 4.0, 2.0, 5.0, 1.0, 2.0, 3.0, 4.0],  # every step: ADI 1
            [0.0, 4.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0],  # 3 of 8: ADI 2.67
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # no demand
            [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, np.nan, 1.0],  # 6 of 7 observed: ADI 1.17
        ]
    )
    assert baselines.intermittent_series(train).tolist() == [False, True, True, False]


def test_seasons_need_two_cycles_of_training() -> None:
    assert baselines.seasons(60.0, 3 * 1440) == (
        (1440,),
        [
            "weekly season (10080 steps) skipped: the training part (4320 steps) holds fewer than "
            "two cycles"
        ],
    )
    assert baselines.seasons(600.0, 15 * 144)[0] == (144, 1008)
    used, notes = baselines.seasons(8 * 86400.0, 100)
    assert used == ()
    assert len(notes) == 2


def test_a_series_too_short_for_a_season_is_noted_not_a_crash() -> None:
    batch = synthetic_batch(models=2, days=0.3, step_s=60, seed=3)
    result = run_backtest(batch, horizon_steps=10, methods=("seasonal-naive", "mstl", "autoets"))
    assert set(result.scores) == {"seasonal-naive", "autoets"}
    assert any(note.startswith("mstl not run: no season") for note in result.notes)
    assert any("daily season (1440 steps) skipped" in note for note in result.notes)
    assert np.isfinite(result.scores["autoets"].mase)


def test_backtest_json_and_table_include_the_baselines(tmp_path: Path) -> None:
    trace = write_trace(
        synthetic_batch(models=2, days=0.3, seed=4, sparse=True), tmp_path / "t.csv"
    )
    out = tmp_path / "result.json"
    chosen = "seasonal-naive,autoets,autotheta,croston-sba,adida,tsb,mstl"
    args = ["backtest", "--trace", str(trace), "--horizon", "10m", "--methods", chosen]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert set(document["methods"]) == set(chosen.split(",")) - {"mstl"}
    assert any(note.startswith("mstl not run") for note in document["notes"])
    for scores in document["methods"].values():
        assert np.isfinite(scores["mase"])
    table = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # every column's name shows
    assert table.exit_code == 0, table.output
    for name in ("autoets", "autotheta", "croston-sba", "adida", "tsb"):
        assert name in table.output
    assert "note: mstl not run" in table.output


def test_without_statsforecast_the_baselines_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(baselines, "available", lambda: False)
    with pytest.raises(InvalidInput, match=r"prewarm\[baselines\]"):
        baselines.require()
    # Imported here: the command modules import the app, which registers them (import order).
    from prewarm.cli.backtest_cmd import default_methods

    methods, notes = default_methods()
    assert "prewarm" in methods
    assert not set(methods) & set(baselines.NAMES)
    assert "prewarm[baselines]" in notes[0]
