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


DIGEST = "c" * 64


def _artifacts_catalog(artifacts: str, *, model: str = "m") -> str:
    return f"models:\n  {model!r}:\n    artifacts: {artifacts}\n"


def test_artifacts_are_parsed_with_default_install_dirs() -> None:
    from planner.catalog import ArtifactFile

    catalog = parse_catalog(
        _artifacts_catalog(
            f"[{{uri: 'https://a.example/m.bin', sha256: '{DIGEST}', kind: mega_cache}},"
            f" {{uri: 'file:///a/inductor.tar.gz', sha256: '{DIGEST}', kind: inductor_cache_tar}},"
            f" {{uri: 'http://a/vllm.tar', sha256: '{DIGEST}', kind: inductor_cache_tar,"
            "   install_dir: /var/cache/prewarm-compile/vllm/torch_compile_cache}]",
            model="org/llama 8b",
        ),
        artifact_root="/compile",
    )
    # The model id's '/' and ' ' become '_' in install paths, as in the agent's file names.
    assert catalog.spec(ModelId("org/llama 8b")).artifacts == (
        ArtifactFile("https://a.example/m.bin", DIGEST, "mega_cache", "/compile/org_llama_8b"),
        ArtifactFile(
            "file:///a/inductor.tar.gz",
            DIGEST,
            "inductor_cache_tar",
            "/compile/org_llama_8b/inductor",
        ),
        ArtifactFile(
            "http://a/vllm.tar",
            DIGEST,
            "inductor_cache_tar",
            "/var/cache/prewarm-compile/vllm/torch_compile_cache",
        ),
    )
    assert parse_catalog(_artifacts_catalog("[]")).spec(ModelId("m")).artifacts == ()
    assert Catalog().spec(ModelId("m")).artifacts == ()
    default = parse_catalog(
        _artifacts_catalog(f"[{{uri: 'file:///a/m', sha256: '{DIGEST}', kind: mega_cache}}]")
    )
    (artifact,) = default.spec(ModelId("m")).artifacts
    assert artifact.install_dir == "/var/cache/prewarm-compile/m"


@pytest.mark.parametrize(
    ("artifacts", "message"),
    [
        ("{uri: 'file:///a'}", r"artifacts must be a list of \{uri, sha256, kind"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST}', kind: aot_inductor}}]",
         r"artifacts\[0\]\.kind must be one of mega_cache, inductor_cache_tar .*'aot_inductor'"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST}'}}]", r"\.kind must be one of .* got None"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST[:63]}', kind: mega_cache}}]",
         r"artifacts\[0\]\.sha256 must be 64 lowercase hex"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST.upper()}', kind: mega_cache}}]",
         "64 lowercase hex"),
        (f"[{{uri: 'file:///a', sha256: '{'g' * 64}', kind: mega_cache}}]", "64 lowercase hex"),
        (f"[{{uri: 'gs://bucket/a', sha256: '{DIGEST}', kind: mega_cache}}]",
         r"unsupported scheme 'gs': GPU agents fetch file://, http://, https://, s3://, hf://"),
        ("[{uri: 's3://bucket/compiled/', kind: mega_cache}]", "is a directory; an artifact"),
        ("[{uri: 'hf://acme/llm@main', kind: mega_cache}]", "is a directory; an artifact"),
        ("[{uri: 's3://bucket/a.mega-cache', kind: mega_cache}]", r"\.sha256 must be 64"),
        (f"[{{uri: '/a/m.bin', sha256: '{DIGEST}', kind: mega_cache}}]", r"\.uri must be a URI"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST}', kind: mega_cache, size: 3}}]",
         "must be a mapping with uri, sha256, kind"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST}', kind: mega_cache, install_dir: rel}}]",
         r"install_dir must be an absolute directory on the node, got 'rel'"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST}', kind: mega_cache, install_dir: /c/../etc}}]",
         "must not contain '..'"),
        (f"[{{uri: 'file:///a', sha256: '{DIGEST}', kind: mega_cache}},"
         f" {{uri: 'file:///b', sha256: '{DIGEST}', kind: mega_cache}}]",
         "two mega_cache artifacts into /var/cache/prewarm-compile/m; .* own install_dir"),
    ],
)  # fmt: skip
def test_bad_artifacts_are_invalid_input_naming_the_entry(artifacts: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as failure:
        parse_catalog(_artifacts_catalog(artifacts), origin="c.yaml")
    assert str(failure.value).startswith("c.yaml: model 'm' artifacts")


def test_weights_take_the_same_schemes_as_artifacts() -> None:
    with pytest.raises(InvalidInput, match=r"weights\[0\]\.uri .* unsupported scheme 'gs'"):
        parse_catalog(f"models:\n  m:\n    weights: [{{uri: 'gs://b/m', sha256: '{DIGEST}'}}]\n")


def test_model_id_that_cannot_name_a_directory_needs_an_install_dir() -> None:
    with pytest.raises(InvalidInput, match="needs an install_dir"):
        parse_catalog(
            _artifacts_catalog(
                f"[{{uri: 'file:///a', sha256: '{DIGEST}', kind: mega_cache}}]", model=".."
            )
        )


def test_catalog_kinds_are_the_protocol_artifact_kinds() -> None:
    from planner.catalog import ARTIFACT_KINDS
    from protos import gpu_agent_pb2 as pb

    proto_kinds = {
        name.removeprefix("ARTIFACT_KIND_").lower()
        for name in pb.ArtifactKind.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
        if name != "ARTIFACT_KIND_UNSPECIFIED"
    }
    assert set(ARTIFACT_KINDS) == proto_kinds


def test_daemon_preload_artifacts_come_from_the_catalog() -> None:
    from prewarm.daemon.app import artifact_sources
    from protos import gpu_agent_pb2 as pb

    catalog = parse_catalog(
        _artifacts_catalog(
            f"[{{uri: 'https://a/m.bin', sha256: '{DIGEST}', kind: mega_cache}},"
            f" {{uri: 'https://a/i.tar', sha256: '{DIGEST}', kind: inductor_cache_tar}}]"
        ),
        artifact_root="/compile",
    )
    mega, tar = artifact_sources(catalog, ModelId("m"))
    assert (mega.source.uri, mega.source.sha256) == ("https://a/m.bin", DIGEST)
    assert (mega.kind, mega.install_dir) == (pb.ARTIFACT_KIND_MEGA_CACHE, "/compile/m")
    assert (tar.kind, tar.install_dir) == (
        pb.ARTIFACT_KIND_INDUCTOR_CACHE_TAR,
        "/compile/m/inductor",
    )
    assert artifact_sources(catalog, ModelId("other")) == []
