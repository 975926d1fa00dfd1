from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InvalidInput
from prewarm.settings import load_settings


def test_defaults_load_without_a_file() -> None:
    settings = load_settings()
    assert settings.forecaster.horizon_s == 1800
    assert settings.forecaster.prometheus.step_s == 60


def test_yaml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "prewarm.yaml"
    config.write_text("forecaster:\n  horizon_s: 900\n  planning_quantile: 0.8\n")
    monkeypatch.setenv("PREWARM_FORECASTER__HORIZON_S", "600")
    settings = load_settings(config)
    assert settings.forecaster.horizon_s == 600  # env wins over the file
    assert settings.forecaster.planning_quantile == 0.8  # file wins over the default


def test_bad_field_is_named(tmp_path: Path) -> None:
    config = tmp_path / "prewarm.yaml"
    config.write_text("forecaster:\n  horizon_s: -5\n")
    with pytest.raises(InvalidInput, match=r"forecaster\.horizon_s"):
        load_settings(config)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    config = tmp_path / "prewarm.yaml"
    config.write_text("forecaster:\n  horizn_s: 5\n")
    with pytest.raises(InvalidInput, match=r"forecaster\.horizn_s"):
        load_settings(config)


@pytest.mark.parametrize("text", ["- a list\n", "forecaster: [unclosed\n"])
def test_non_mapping_or_broken_yaml_is_refused(tmp_path: Path, text: str) -> None:
    config = tmp_path / "prewarm.yaml"
    config.write_text(text)
    with pytest.raises(InvalidInput, match=str(config)):
        load_settings(config)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")
