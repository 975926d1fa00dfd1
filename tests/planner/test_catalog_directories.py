"""Catalog weights as a model directory: every entry with its path inside the directory."""

from __future__ import annotations

import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from planner.catalog import WeightFile, parse_catalog

A, B = "a" * 64, "b" * 64


def _catalog(entries: str) -> str:
    return f"models:\n  org/tiny:\n    weights:\n{entries}"


def test_entries_with_paths_make_a_directory_model_and_the_daemon_sends_them() -> None:
    from prewarm.daemon.app import weight_sources

    catalog = parse_catalog(
        _catalog(
            f"      - {{uri: 'file:///models/tiny/config.json', sha256: '{A}',"
            " path: config.json}\n"
            f"      - {{uri: 'https://m.example/tiny/t/vocab.json', sha256: '{B}', size_bytes: 7,"
            " path: tokenizer/vocab.json}\n"
        )
    )
    assert catalog.spec(ModelId("org/tiny")).weights == (
        WeightFile("file:///models/tiny/config.json", A, 0, "config.json"),
        WeightFile("https://m.example/tiny/t/vocab.json", B, 7, "tokenizer/vocab.json"),
    )
    sources = weight_sources(catalog, ModelId("org/tiny"))
    assert [(s.path, s.size_bytes) for s in sources] == [
        ("config.json", 0),
        ("tokenizer/vocab.json", 7),
    ]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (f"      - {{uri: 'file:///m/x', sha256: '{A}', path: '../x'}}\n", "no empty, '.' or '..'"),
        (f"      - {{uri: 'file:///m/x', sha256: '{A}', path: '/etc/x'}}\n", "must be relative"),
        (f"      - {{uri: 'file:///m/x', sha256: '{A}', path: 'a b'}}\n", "only letters"),
        (f"      - {{uri: 'file:///m/x', sha256: '{A}', path: ''}}\n", "inside the model"),
        (
            f"      - {{uri: 'file:///m/x', sha256: '{A}', path: x}}\n"
            f"      - {{uri: 'file:///m/y', sha256: '{B}'}}\n",
            "either every entry has a path",
        ),
        (
            f"      - {{uri: 'file:///m/x', sha256: '{A}', path: x}}\n"
            f"      - {{uri: 'file:///m/y', sha256: '{B}', path: x}}\n",
            "listed twice",
        ),
    ],
)
def test_bad_directory_entries_are_refused_with_the_field_named(entries: str, message: str) -> None:
    with pytest.raises(InvalidInput, match="org/tiny") as caught:
        parse_catalog(_catalog(entries))
    assert message in str(caught.value)
