"""hf:// sources against a FAKE Hugging Face Hub (tests/harness/fake_hub.py; the Hub cannot run
here): listing a pinned revision, where the token goes, redirects to the CDN, verification by LFS
sha256 and git blob sha1, and the Hub's errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.errors import DataLoss, FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from gpu_agent import remote
from gpu_agent.config import RemoteSourcesConfig
from gpu_agent.control import LoadControl
from gpu_agent.remote import hf
from gpu_agent.sources import Fetcher, SourcePolicy
from tests.harness import fake_hub as fake_hub_harness
from tests.harness.fake_hub import FakeHub, FakeRepo, git_blob_sha1, hub_uri

fake_hub = fake_hub_harness.fake_hub

TOKEN = "hf_test_token"
WEIGHTS = bytes(range(256)) * 5000  # 1.28 MB: two ranges of 1 MiB
CONFIG = b'{"model_type": "gpt2"}\n'
TOKENIZER = b'{"version": "1.0"}\n'


def repo(**kwargs: object) -> FakeRepo:
    files = {"model.safetensors": WEIGHTS, "config.json": CONFIG, "tok/tokenizer.json": TOKENIZER}
    return FakeRepo(files=files, lfs=frozenset({"model.safetensors"}), **kwargs)  # type: ignore[arg-type]


def settings(hub: FakeHub, tmp_path: Path, **hf_settings: object) -> RemoteSourcesConfig:
    token_file = tmp_path / "hf-token"
    token_file.write_text(TOKEN + "\n")
    cdn_host = hub.cdn_endpoint.removeprefix("http://")
    values: dict[str, object] = {
        "endpoint": hub.endpoint, "token_file": str(token_file), "allowed_repos": ["acme/*"],
        "allowed_redirect_hosts": [cdn_host],
    }  # fmt: skip
    values.update(hf_settings)
    return RemoteSourcesConfig.model_validate({"hf": values})


def policy(config: RemoteSourcesConfig) -> SourcePolicy:
    return SourcePolicy(
        ["file"], file_roots=[], http_prefixes=[], require_sha256=True, remote=config
    )


def fetch(config: RemoteSourcesConfig, uri: str, dest: Path, sha256: str = "") -> tuple[int, str]:
    source = policy(config).check(uri, sha256)
    fetcher = Fetcher(parallel_ranges=2, range_bytes=1024**2, timeout_s=10, remote=config)
    return fetcher.fetch(source, dest, control=LoadControl(), progress=lambda _n: None)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ------------------------------------------------------------------------------ URIs, pure


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://acme/llm", hf.HfLocation("acme/llm", "main", "")),
        ("hf://acme/llm@v1.0", hf.HfLocation("acme/llm", "v1.0", "")),
        ("hf://acme/llm@refs%2Fpr%2F3/sub/", hf.HfLocation("acme/llm", "refs/pr/3", "sub/")),
        ("hf://acme/llm@" + "a" * 40 + "/c.json", hf.HfLocation("acme/llm", "a" * 40, "c.json")),
    ],
)
def test_hf_uris_parse(uri: str, expected: hf.HfLocation) -> None:
    assert hf.parse_hf_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("hf://llm", InvalidInput),
        ("hf://acme/ll m@main", InvalidInput),
        ("hf://acme/llm@", InvalidInput),
        ("hf://acme/llm@main/a/../../b", PermissionDenied),
        ("hf://acme/llm@main/x?y", InvalidInput),
    ],
)
def test_malformed_hf_uris_are_refused(uri: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        hf.parse_hf_uri(uri)


def test_hf_is_refused_until_repositories_are_allowed(tmp_path: Path) -> None:
    with pytest.raises(PermissionDenied, match="allowed_repos is empty"):
        policy(RemoteSourcesConfig()).check("hf://acme/llm@main", "")
    config = RemoteSourcesConfig.model_validate({"hf": {"allowed_repos": ["acme/llm"]}})
    assert policy(config).check("hf://acme/llm@main", "").directory
    assert not policy(config).check("hf://acme/llm@main/config.json", "").directory
    with pytest.raises(PermissionDenied, match=r"not in remote\.hf\.allowed_repos"):
        policy(config).check("hf://acme/other@main", "")
    pinned = RemoteSourcesConfig.model_validate(
        {"hf": {"allowed_repos": ["acme/*"], "require_pinned_revision": True}}
    )
    with pytest.raises(PermissionDenied, match="pin the commit"):
        policy(pinned).check("hf://acme/llm@main", "")
    assert policy(pinned).check("hf://acme/llm@" + "0" * 40, "").directory


# ------------------------------------------------------------------------------ listing


def test_expand_lists_a_pinned_revision_with_sizes_and_hashes(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    commit = hub.add_repo("acme/llm", repo())
    files = remote.expand(hub_uri("acme/llm", commit), settings(hub, tmp_path))
    by_path = {f.path: f for f in files}
    assert sorted(by_path) == ["config.json", "model.safetensors", "tok/tokenizer.json"]
    weights = by_path["model.safetensors"]
    assert (weights.size, weights.sha256, weights.git_sha1) == (
        len(WEIGHTS), hashlib.sha256(WEIGHTS).hexdigest(), None,
    )  # fmt: skip
    config = by_path["config.json"]
    assert (config.size, config.sha256, config.git_sha1) == (
        len(CONFIG),
        None,
        git_blob_sha1(CONFIG),
    )
    assert weights.uri == f"hf://acme/llm@{commit}/model.safetensors"
    assert weights.url == f"{hub.endpoint}/acme/llm/resolve/{commit}/model.safetensors"
    assert weights.headers == {"Authorization": f"Bearer {TOKEN}"}


def test_a_branch_resolves_to_its_commit_and_a_folder_lists_relative_paths(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    commit = hub.add_repo("acme/llm", repo())
    files = remote.expand("hf://acme/llm@main/tok/", settings(hub, tmp_path))
    assert [(f.path, f.uri) for f in files] == [
        ("tokenizer.json", f"hf://acme/llm@{commit}/tok/tokenizer.json")
    ]
    assert remote.expand("hf://acme/llm", settings(hub, tmp_path))  # revision defaults to main


def test_a_revision_that_does_not_exist_is_not_found(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    hub.add_repo("acme/llm", repo())
    with pytest.raises(NotFound, match=r"revision 'v9' of acme/llm does not exist"):
        remote.expand("hf://acme/llm@v9", settings(hub, tmp_path))
    with pytest.raises(NotFound, match="repository acme/missing does not exist"):
        remote.expand("hf://acme/missing@main", settings(hub, tmp_path))
    with pytest.raises(NotFound, match="has no files"):
        remote.expand("hf://acme/llm@main/nothing/", settings(hub, tmp_path))


def test_private_and_gated_repositories_need_the_token(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    hub.add_repo("acme/private", repo(private=True))
    hub.add_repo("acme/gated", repo(gated=True))
    assert remote.expand("hf://acme/private@main", settings(hub, tmp_path))
    anonymous = settings(hub, tmp_path).model_copy(deep=True)
    anonymous.hf.token_file = None
    with pytest.raises(NotFound, match=r"private .*\(no token\)"):
        remote.expand("hf://acme/private@main", anonymous, environ={})
    with pytest.raises(PermissionDenied, match="gated"):
        remote.expand("hf://acme/gated@main", anonymous, environ={})
    # HF_TOKEN and HF_ENDPOINT stand in for settings that are not given.
    anonymous.hf.endpoint = None
    env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.endpoint}
    assert remote.expand("hf://acme/gated@main", anonymous, environ=env)


def test_an_unreadable_token_file_is_a_precondition_error(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    hub.add_repo("acme/llm", repo())
    config = settings(hub, tmp_path, token_file=str(tmp_path / "missing"))
    with pytest.raises(FailedPrecondition, match="token file"):
        remote.expand("hf://acme/llm@main", config)


# ------------------------------------------------------------------------------ fetching


def test_an_lfs_file_follows_the_redirect_to_the_cdn_without_the_token(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    commit = hub.add_repo("acme/private", repo(private=True))
    dest = tmp_path / "out" / "model.safetensors"
    size, digest = fetch(settings(hub, tmp_path), f"hf://acme/private@{commit}/model.safetensors",
                         dest)  # fmt: skip
    assert (size, digest) == (len(WEIGHTS), hashlib.sha256(WEIGHTS).hexdigest())
    assert dest.read_bytes() == WEIGHTS
    to_hub = hub.requests_to("hub")
    to_cdn = hub.requests_to("cdn")
    assert to_hub
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in to_hub)
    assert len(to_cdn) == 2  # two ranges, both through the redirect
    assert all("Authorization" not in r.headers for r in to_cdn)
    assert sorted(r.headers["Range"] for r in to_cdn) == [
        f"bytes=0-{1024**2 - 1}", f"bytes={1024**2}-{len(WEIGHTS) - 1}",
    ]  # fmt: skip


def test_a_redirect_to_a_host_that_is_not_allowed_is_refused(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, other = fake_hub
    commit = hub.add_repo("acme/llm", repo())
    hub.redirect_base = other
    dest = tmp_path / "out" / "model.safetensors"
    with pytest.raises(PermissionDenied, match="not an allowed redirect host"):
        fetch(settings(hub, tmp_path), f"hf://acme/llm@{commit}/model.safetensors", dest)
    assert hub.requests_to("other") == []
    assert leftovers(dest.parent) == []
    # Allowed once the setting names it.
    allowed = settings(hub, tmp_path, allowed_redirect_hosts=[other.removeprefix("http://")])
    fetch(allowed, f"hf://acme/llm@{commit}/model.safetensors", dest)
    assert all("Authorization" not in r.headers for r in hub.requests_to("other"))


def test_a_small_file_is_verified_by_its_git_blob_sha1(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    commit = hub.add_repo("acme/llm", repo())
    dest = tmp_path / "out" / "config.json"
    assert fetch(settings(hub, tmp_path), f"hf://acme/llm@{commit}/config.json", dest) == (
        len(CONFIG), hashlib.sha256(CONFIG).hexdigest(),
    )  # fmt: skip
    assert dest.read_bytes() == CONFIG

    hub.served_override["config.json"] = b'{"model_type": "gpt3"}\n'  # same size, other bytes
    dest.unlink()
    with pytest.raises(DataLoss, match="git blob sha1"):
        fetch(settings(hub, tmp_path), f"hf://acme/llm@{commit}/config.json", dest)
    assert leftovers(dest.parent) == []


def test_an_lfs_file_that_does_not_match_its_sha256_is_data_loss(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    commit = hub.add_repo("acme/llm", repo())
    oid = hashlib.sha256(WEIGHTS).hexdigest()
    hub.blobs[oid] = bytes(reversed(WEIGHTS))
    dest = tmp_path / "out" / "model.safetensors"
    with pytest.raises(DataLoss, match="sha256"):
        fetch(settings(hub, tmp_path), f"hf://acme/llm@{commit}/model.safetensors", dest)
    assert leftovers(dest.parent) == []


def test_a_file_missing_from_the_revision_is_not_found(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    commit = hub.add_repo("acme/llm", repo())
    dest = tmp_path / "out" / "absent.json"
    with pytest.raises(NotFound, match="is not a file of acme/llm"):
        fetch(settings(hub, tmp_path), f"hf://acme/llm@{commit}/absent.json", dest)
    assert leftovers(dest.parent) == []


def test_files_of_a_pinned_commit_cost_one_listing(
    fake_hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    hub, _ = fake_hub
    commit = hub.add_repo("acme/cached", repo())
    config = settings(hub, tmp_path)
    for file in remote.expand(f"hf://acme/cached@{commit}", config):
        fetch(config, file.uri, tmp_path / "out" / file.path.replace("/", "_"))
    listings = [r for r in hub.requests_to("hub") if r.path.startswith("/api/")]
    assert len(listings) == 1
