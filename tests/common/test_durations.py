from __future__ import annotations

import pytest

from common.durations import format_duration, parse_duration_s
from common.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("250ms", 0.25),
        (" 15S ", 15.0),
        ("1.5h", 5400.0),
        ("0", 0.0),
    ],
)
def test_parses_valid_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-5", "5x", "m30", "1h-30m", "nan", "inf", "30m junk"])
def test_rejects_bad_durations_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"duration"):
        parse_duration_s(text)


def test_formats_round_trip() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0) == "0s"
    assert parse_duration_s(format_duration(93784)) == 93784
