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


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "uri",
    [
        f"hf://org/tiny@{COMMIT}",
        f"hf://org/tiny@{COMMIT}/base/",
        "hf://org/tiny",
        "s3://models-bucket/models/tiny/",
        "s3://models-bucket/",
    ],
)
def test_one_directory_uri_is_a_directory_model_the_agents_list(uri: str) -> None:
    from prewarm.daemon.app import weight_sources

    catalog = parse_catalog(_catalog(f"      - {{uri: '{uri}'}}\n"))
    (weights,) = catalog.spec(ModelId("org/tiny")).weights
    assert weights == WeightFile(uri, "", 0, "")
    assert weights.is_directory
    (source,) = weight_sources(catalog, ModelId("org/tiny"))
    assert (source.uri, source.sha256, source.path, source.size_bytes) == (uri, "", "", 0)


def test_remote_files_take_a_sha256_where_the_agent_needs_one() -> None:
    catalog = parse_catalog(
        _catalog(
            f"      - {{uri: 'hf://org/tiny@{COMMIT}/config.json', path: config.json}}\n"
            f"      - {{uri: 's3://models-bucket/tiny/w.safetensors', sha256: '{A}',"
            " path: w.safetensors}\n"
        )
    )
    assert [(w.sha256, w.is_directory) for w in catalog.spec(ModelId("org/tiny")).weights] == [
        ("", False),
        (A, False),
    ]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (f"      - {{uri: 'hf://org/tiny@{COMMIT}', sha256: '{A}'}}\n", "leave out sha256"),
        ("      - {uri: 's3://models-bucket/tiny/', path: x}\n", "only weights entry"),
        ("      - {uri: 's3://models-bucket/tiny/', size_bytes: 10}\n", "only weights entry"),
        (
            "      - {uri: 's3://models-bucket/tiny/'}\n"
            f"      - {{uri: 'file:///m/y', sha256: '{B}'}}\n",
            "only weights entry",
        ),
        ("      - {uri: 's3://models-bucket/tiny/w.safetensors'}\n", "sha256 must be 64"),
        ("      - {uri: 's3://Bad_Bucket/tiny/'}\n", "s3://bucket/prefix/"),
        ("      - {uri: 'hf://tiny'}\n", "must name a Hub repository"),
        ("      - {uri: 'hf://org/tiny@'}\n", "empty revision"),
        ("      - {uri: 'hf://org/tiny@main/../x/'}\n", "'..' segment"),
        ("      - {uri: 'gs://b/tiny/'}\n", "unsupported scheme 'gs'"),
    ],
)
def test_bad_directory_uris_are_refused_with_the_field_named(entries: str, message: str) -> None:
    with pytest.raises(InvalidInput, match="org/tiny") as caught:
        parse_catalog(_catalog(entries))
    assert message in str(caught.value)
