from __future__ import annotations

from pathlib import Path

from prewarm.config_reference import render

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_committed_reference_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is out of date: run "
        "`.venv/bin/python -m prewarm.config_reference > docs/configuration.md`"
    )


def test_every_leaf_setting_has_an_env_var_that_loads(monkeypatch: object) -> None:
    text = render()
    assert "`PREWARM_DAEMON__TICK_S`" in text
    assert "`PREWARM_FORECASTER__PROMETHEUS__URL`" in text
