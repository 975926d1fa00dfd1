from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from common.errors import InvalidInput
from common.ids import ModelId
from planner.catalog import (
    DEFAULT_SIZE_CLASSES,
    Catalog,
    default_spec,
    load_catalog,
    parse_catalog,
    size_class_for,
)


def test_defaults_are_deterministic_and_follow_the_table() -> None:
    first = [default_spec(ModelId(f"model-{i}")) for i in range(2000)]
    again = [default_spec(ModelId(f"model-{i}")) for i in range(2000)]
    assert first == again
    sizes = {c.weights_gb for c in DEFAULT_SIZE_CLASSES}
    assert {s.weights_gb for s in first} <= sizes
    shares = Counter(size_class_for(ModelId(f"model-{i}")).name for i in range(2000))
    for size_class in DEFAULT_SIZE_CLASSES:
        # Every class is drawn roughly with its documented share.
        assert abs(shares[size_class.name] / 2000 - size_class.share) < 0.05
    assert abs(sum(c.share for c in DEFAULT_SIZE_CLASSES) - 1.0) < 1e-9


def test_entries_override_defaults_and_missing_fields_come_from_the_class() -> None:
    catalog = parse_catalog(
        """
models:
  llama-70b:
    weights_gb: 140
    image: ghcr.io/acme/vllm:1
    node_pool: h100
    min_replicas: 1
    workload: {namespace: serving, name: llama}
"""
    )
    spec = catalog.spec(ModelId("llama-70b"))
    assert spec.weights_gb == 140
    assert spec.image == "ghcr.io/acme/vllm:1"
    assert spec.node_pool == "h100"
    assert spec.min_replicas == 1
    assert spec.workload is not None
    assert spec.workload.namespace == "serving"
    assert spec.replica_rps == default_spec(ModelId("llama-70b")).replica_rps
    assert not spec.defaulted


def test_bare_mapping_and_empty_file_are_accepted() -> None:
    assert parse_catalog("m1: {weights_gb: 3}\n").spec(ModelId("m1")).weights_gb == 3
    assert parse_catalog("").specs == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [1, 2", "not valid YAML"),
        ("models:\n  m: {weights_gb: -1}\n", "weights_gb must be > 0"),
        ("models:\n  m: {image_gb: -2}\n", "image_gb must be > 0"),
        ("models:\n  m: {compile_s: -2}\n", "compile_s must be >= 0"),
        ("models:\n  m: {weights_gb: big}\n", "must be a number"),
        ("models:\n  m: {wieghts_gb: 3}\n", "unknown fields"),
        ("models:\n  m: {min_replicas: 3, max_replicas: 1}\n", "exceeds max_replicas"),
        ("- a\n- b\n", "must hold a mapping"),
        ("models: {}\nextra: 1\n", "unknown top-level keys"),
    ],
)
def test_bad_catalogs_are_invalid_input(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_catalog(text, origin="c.yaml")


def test_load_catalog_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")


def test_unknown_model_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    catalog = parse_catalog("models:\n  known: {weights_gb: 3}\n")
    with caplog.at_level(logging.INFO, logger="planner.catalog"):
        for _ in range(5):
            catalog.spec(ModelId("stranger"))
    assert sum("stranger" in record.getMessage() for record in caplog.records) == 1
    assert Catalog().spec(ModelId("x")).defaulted


def test_weights_are_parsed_and_checked() -> None:
    from planner.catalog import WeightFile, parse_catalog

    digest = "a" * 64
    catalog = parse_catalog(
        "models:\n  m:\n    weights:\n"
        f"      - {{uri: 'file:///w/m.safetensors', sha256: '{digest}', size_bytes: 10}}\n"
    )
    assert catalog.spec(ModelId("m")).weights == (
        WeightFile(uri="file:///w/m.safetensors", sha256=digest, size_bytes=10),
    )
    for bad, message in (
        ("weights: []", "non-empty list"),
        ("weights: [{uri: 'm.safetensors', sha256: '" + digest + "'}]", "must be a URI"),
        ("weights: [{uri: 'file:///m', sha256: 'ABC'}]", "64 lowercase hex"),
        ("weights: [{uri: 'file:///m', sha256: '" + digest + "', extra: 1}]", "a mapping with"),
    ):
        with pytest.raises(InvalidInput, match=message):
            parse_catalog(f"models:\n  m:\n    {bad}\n")


def test_daemon_preload_sources_come_from_the_catalog() -> None:
    from common.errors import NotFound
    from planner.catalog import parse_catalog
    from prewarm.daemon.app import weight_sources

    digest = "b" * 64
    catalog = parse_catalog(
        f"models:\n  m:\n    weights: [{{uri: 'https://models/m', sha256: '{digest}'}}]\n"
    )
    (source,) = weight_sources(catalog, ModelId("m"))
    assert (source.uri, source.sha256) == ("https://models/m", digest)
    with pytest.raises(NotFound, match="add `weights"):
        weight_sources(catalog, ModelId("other"))
