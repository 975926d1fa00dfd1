"""Directory sources through a real agent over gRPC: one ``hf://org/name@rev[/folder/]`` source
(against the FAKE Hub of tests/harness/fake_hub.py; the Hub cannot run here) or one
``s3://bucket/prefix/`` source (against a real MinIO) is listed by the agent, each file fetched
and verified (LFS sha256, git blob sha1 for the Hub's small files, S3 stored SHA256 checksums)
and the directory materialised at its revision: the Hub's commit, or a digest of the prefix's
listing. Bad input fails with one clear status and leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidInput
from gpu_agent.config import AgentConfig, AuthConfig, RemoteSourcesConfig
from gpu_agent.expansion import listed_entries, listing_revision
from gpu_agent.model_dir import DirectoryEntry, check_revision
from gpu_agent.remote import RemoteFile
from protos import gpu_agent_pb2 as pb
from tests.harness import fake_hub as fake_hub_harness
from tests.harness import s3 as s3_harness
from tests.harness.agent import leftovers, preload_all, refused_preload
from tests.harness.fake_hub import FakeHub, FakeRepo, hub_uri
from tests.harness.model_dirs import current_target, model_base, tree_bytes, write_model_dir
from tests.harness.s3 import RunningS3

fake_hub = fake_hub_harness.fake_hub
s3_server = s3_harness.s3_server
s3_bucket = s3_harness.s3_bucket

CODE = grpc.StatusCode
MODEL = "acme/tiny"
TOKEN = "hf_test_token"
SHARDS = frozenset({"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})


def _request(uri: str, *, sha256: str = "", **kwargs: object) -> pb.PreloadRequest:
    return pb.PreloadRequest(
        model_id=MODEL,
        weights=[pb.Source(uri=uri, sha256=sha256)],
        target_tier=pb.TIER_HOST,
        **kwargs,  # type: ignore[arg-type]
    )


def _with(config: AgentConfig, **update: object) -> AgentConfig:
    """``config`` with ``update``; callers on loopback only, so no caller authentication."""
    return config.model_copy(update={"auth": AuthConfig(mode="none"), **update})


def _no_partials(config: AgentConfig) -> None:
    for root in (Path(config.cache_dir), Path(config.shm_dir)):
        assert not [p for p in root.rglob("*") if ".partial" in p.name], leftovers(root)


async def _held(stub: object, model_id: str = MODEL) -> pb.ModelHolding:
    status = await stub.Status(pb.StatusRequest())  # type: ignore[attr-defined]
    (held,) = [m for m in status.models if m.model_id == model_id]
    return held


# ------------------------------------------------------------------------------ pure parts

_HEX = "0123456789abcdef"
_files = st.lists(
    st.tuples(
        st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?\.json", fullmatch=True),
        st.text(_HEX, min_size=64, max_size=64) | st.none(),
        st.text(_HEX, min_size=1, max_size=32),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda item: item[0],
)


@given(files=_files, data=st.data())
def test_an_s3_prefixs_revision_depends_on_its_files_not_their_order(
    files: list[tuple[str, str | None, str]], data: st.DataObject
) -> None:
    listed = [
        RemoteFile(uri=f"s3://b/p/{path}", path=path, url="", sha256=sha, etag=f'"{etag}"')
        for path, sha, etag in files
    ]
    shuffled = data.draw(st.permutations(listed))
    revision = listing_revision("s3://b/p/", listed)
    assert revision == listing_revision("s3://b/p/", shuffled)
    assert check_revision(revision) == revision
    changed = [dataclasses.replace(listed[0], etag='"other"', sha256=None), *listed[1:]]
    assert listing_revision("s3://b/p/", changed) != revision


def test_listed_files_map_to_entries_and_git_only_files_keep_an_empty_sha256() -> None:
    commit = "c" * 40
    files = [
        RemoteFile(uri=f"hf://acme/tiny@{commit}/w.safetensors", path="w.safetensors",
                   url="https://cdn/x", size=10, sha256="a" * 64),
        RemoteFile(uri=f"hf://acme/tiny@{commit}/config.json", path="config.json",
                   url="https://hub/y", size=-1, git_sha1="b" * 40),
    ]  # fmt: skip
    expansion = listed_entries("hf://acme/tiny@main", files, require_checksum=True)
    assert expansion.revision == commit
    assert expansion.entries == (
        DirectoryEntry("w.safetensors", files[0].uri, "a" * 64, 10),
        DirectoryEntry("config.json", files[1].uri, "", 0),
    )
    bare = [dataclasses.replace(files[1], git_sha1=None)]
    with pytest.raises(InvalidInput, match=r"config\.json .* no checksum"):
        listed_entries("hf://acme/tiny@main", bare, require_checksum=True)
    assert (
        listed_entries("hf://acme/tiny@main", bare, require_checksum=False).entries[0].sha256 == ""
    )


# ---------------------------------------------------------------------------------- hf://


def _hub_config(config: AgentConfig, hub: FakeHub, tmp_path: Path, **agent: object) -> AgentConfig:
    token_file = tmp_path / "hf-token"
    token_file.write_text(TOKEN + "\n")
    remote = RemoteSourcesConfig.model_validate({"hf": {
        "endpoint": hub.endpoint, "token_file": str(token_file), "allowed_repos": ["acme/*"],
        "allowed_redirect_hosts": [hub.cdn_endpoint.removeprefix("http://")],
    }})  # fmt: skip
    return _with(config, remote=remote, **agent)


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, bytes]:
    """The files of a tiny model directory: two safetensors shards (LFS on the Hub), their index,
    config.json and tokenizer/vocab.json (small git files, verified by git blob sha1 only)."""
    return write_model_dir(tmp_path / "tiny-src")


async def test_an_hf_directory_is_fetched_verified_and_held_at_its_commit(
    start_agent, config: AgentConfig, fake_hub: tuple[FakeHub, str], tmp_path: Path,
    tiny: dict[str, bytes],
) -> None:  # fmt: skip
    hub, _ = fake_hub
    commit = hub.add_repo(MODEL, FakeRepo(files=dict(tiny), lfs=SHARDS, private=True))
    cfg = _hub_config(config, hub, tmp_path)
    running = await start_agent(cfg)

    # A branch: the agent lists it once and fetches every file from the commit it resolved to.
    progress = await preload_all(running.stub, _request(hub_uri(MODEL, "main")))
    assert progress[-1].stage == pb.PreloadProgress.STAGE_DONE
    held = await _held(running.stub)
    assert held.revision == commit
    shm = Path(cfg.shm_dir)
    assert current_target(shm, MODEL) == commit
    assert tree_bytes(Path(held.current_dir)) == tiny
    assert held.bytes == sum(len(b) for b in tiny.values())
    _no_partials(cfg)
    # Small files came from the Hub itself (with the token), LFS shards from the CDN (without).
    resolved = [s.path for s in hub.requests_to("hub") if "/resolve/" in s.path]
    assert any(p.endswith("/config.json") for p in resolved)
    assert all(s.headers.get("Authorization") == f"Bearer {TOKEN}" for s in hub.requests_to("hub"))
    cdn = hub.requests_to("cdn")
    assert cdn
    assert all("Authorization" not in s.headers for s in cdn)

    # The same commit again is a no-op; a folder of it is a directory model of its own.
    again = await preload_all(running.stub, _request(hub_uri(MODEL, commit)))
    assert again[-1].message == "already held"
    folder = pb.PreloadRequest(
        model_id="acme/tiny-tokenizer", target_tier=pb.TIER_HOST,
        weights=[pb.Source(uri=hub_uri(MODEL, commit, "tokenizer/"))],
    )  # fmt: skip
    await preload_all(running.stub, folder)
    tokenizer = await _held(running.stub, "acme/tiny-tokenizer")
    assert tokenizer.revision == commit
    assert tree_bytes(Path(tokenizer.current_dir)) == {"vocab.json": tiny["tokenizer/vocab.json"]}


async def test_a_small_file_whose_git_blob_sha1_does_not_match_is_data_loss(
    start_agent, config: AgentConfig, fake_hub: tuple[FakeHub, str], tmp_path: Path,
    tiny: dict[str, bytes],
) -> None:  # fmt: skip
    hub, _ = fake_hub
    commit = hub.add_repo(MODEL, FakeRepo(files=dict(tiny), lfs=SHARDS))
    # Same size, other bytes: only the git blob sha1 (the Hub's one hash of a small file) tells.
    hub.served_override["config.json"] = tiny["config.json"].replace(b"tiny", b"evil")
    cfg = _hub_config(config, hub, tmp_path)
    running = await start_agent(cfg)
    details = await refused_preload(
        running.stub, _request(hub_uri(MODEL, commit)), CODE.DATA_LOSS, clean=cfg
    )
    print(f"tampered git file: {details}")
    assert "git blob sha1" in details
    assert "config.json" in details


class _NoHashRepo(FakeRepo):
    """A repository whose listing gives ``config.json`` neither an LFS sha256 nor a blobId."""

    def siblings(self) -> list[dict[str, object]]:
        out = super().siblings()
        for sibling in out:
            if sibling["rfilename"] == "config.json":
                del sibling["blobId"]
        return out


async def test_a_listed_file_without_any_checksum_is_refused_when_checksums_are_required(
    start_agent, config: AgentConfig, fake_hub: tuple[FakeHub, str], tmp_path: Path,
    tiny: dict[str, bytes],
) -> None:  # fmt: skip
    hub, _ = fake_hub
    commit = hub.add_repo(MODEL, _NoHashRepo(files=dict(tiny), lfs=SHARDS))
    cfg = _hub_config(config, hub, tmp_path)
    running = await start_agent(cfg)
    details = await refused_preload(
        running.stub, _request(hub_uri(MODEL, commit)), CODE.INVALID_ARGUMENT, clean=cfg
    )
    assert "config.json" in details
    assert "no checksum" in details

    relaxed = _hub_config(config, hub, tmp_path, require_sha256=False)
    relaxed = relaxed.model_copy(update={"cache_dir": str(tmp_path / "cache2"),
                                         "shm_dir": str(tmp_path / "shm2")})  # fmt: skip
    other = await start_agent(relaxed)
    await preload_all(other.stub, _request(hub_uri(MODEL, commit)))
    assert tree_bytes(Path((await _held(other.stub)).current_dir)) == tiny


async def test_hf_directory_errors_are_one_clear_status_each_and_leave_nothing(
    start_agent, config: AgentConfig, fake_hub: tuple[FakeHub, str], tmp_path: Path,
    tiny: dict[str, bytes], models_dir: Path,
) -> None:  # fmt: skip
    hub, _ = fake_hub
    commit = hub.add_repo(MODEL, FakeRepo(files=dict(tiny), lfs=SHARDS))
    hub.add_repo("acme/private", FakeRepo(files={"a.json": b"{}"}, private=True))
    hub.add_repo("acme/gated", FakeRepo(files={"a.json": b"{}"}, gated=True))
    cfg = _hub_config(config, hub, tmp_path)
    running = await start_agent(cfg)

    async def refused(request: pb.PreloadRequest, code: grpc.StatusCode, needle: str) -> None:
        details = await refused_preload(running.stub, request, code, clean=cfg)
        print(f"{request.weights[0].uri}: {code.name}: {details}")
        assert needle in details

    await refused(_request("hf://other/model@main"), CODE.PERMISSION_DENIED,
                  "not in remote.hf.allowed_repos")  # fmt: skip
    await refused(_request(hub_uri(MODEL, "f" * 40)), CODE.NOT_FOUND, "does not exist")
    await refused(_request(hub_uri(MODEL, commit, "nothing/")), CODE.NOT_FOUND, "no files")
    await refused(_request(hub_uri(MODEL, commit), sha256="0" * 64), CODE.INVALID_ARGUMENT,
                  "no sha256 of its own")  # fmt: skip
    await refused(_request("hf://acme/ti ny@main"), CODE.INVALID_ARGUMENT, "repository id")
    # A wrong token: the Hub answers a private repository as if it did not exist, and a gated
    # one as gated (the fake cannot tell a token without the terms accepted from a wrong one).
    (tmp_path / "hf-token").write_text("hf_wrong\n")
    await refused(_request(hub_uri("acme/private", "main")), CODE.NOT_FOUND, "private")
    await refused(_request(hub_uri("acme/gated", "main")), CODE.PERMISSION_DENIED, "gated")
    (tmp_path / "hf-token").write_text(TOKEN + "\n")

    # A directory URI must be the Preload's only source, and has no path of its own.
    (models_dir / "x.json").write_text("{}")
    extra = pb.Source(uri=(models_dir / "x.json").as_uri(),
                      sha256=hashlib.sha256(b"{}").hexdigest())  # fmt: skip
    both = pb.PreloadRequest(model_id=MODEL, target_tier=pb.TIER_HOST,
                             weights=[pb.Source(uri=hub_uri(MODEL, commit)), extra])  # fmt: skip
    await refused(both, CODE.INVALID_ARGUMENT, "only source")
    with_path = pb.PreloadRequest(
        model_id=MODEL, target_tier=pb.TIER_HOST,
        weights=[pb.Source(uri=hub_uri(MODEL, commit), path="m")],
    )  # fmt: skip
    await refused(with_path, CODE.INVALID_ARGUMENT, "names a directory")


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An http endpoint that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_a_listing_that_does_not_answer_ends_at_the_preloads_deadline(
    start_agent, config: AgentConfig, silent_endpoint: str
) -> None:
    remote = RemoteSourcesConfig.model_validate(
        {"hf": {"endpoint": silent_endpoint, "allowed_repos": ["acme/*"]}}
    )
    cfg = _with(config, remote=remote)
    running = await start_agent(cfg)
    soon = Timestamp()
    soon.FromNanoseconds(int((time.time() + 1.0) * 1e9))
    started = time.monotonic()
    details = await refused_preload(
        running.stub, _request(hub_uri(MODEL, "main"), deadline=soon), CODE.DEADLINE_EXCEEDED,
        clean=cfg,
    )  # fmt: skip
    assert time.monotonic() - started < 5
    assert "deadline" in details


# ---------------------------------------------------------------------------------- s3://


def _s3_config(config: AgentConfig, s3: RunningS3, bucket: str, secret_dir: Path) -> AgentConfig:
    secret_dir.mkdir(exist_ok=True)
    (secret_dir / "AWS_ACCESS_KEY_ID").write_text(s3.access_key)
    (secret_dir / "AWS_SECRET_ACCESS_KEY").write_text(s3.secret_key)
    remote = RemoteSourcesConfig.model_validate({"s3": {
        "endpoint": s3.endpoint, "region": s3_harness.REGION,
        "allowed_buckets": [f"{bucket}/models/"], "credentials_dir": str(secret_dir),
    }})  # fmt: skip
    return _with(config, remote=remote)


def _upload(s3: RunningS3, bucket: str, prefix: str, files: dict[str, bytes]) -> dict[str, str]:
    """Upload ``files`` under ``prefix`` with their SHA256 checksums; their sha256 by path."""
    return {path: s3.put(bucket, prefix + path, data, with_sha256=True)
            for path, data in files.items()}  # fmt: skip


def _prefix_revision(sums: dict[str, str]) -> str:
    """The documented revision of an s3 prefix: 16 hex digits of its sorted (path, sha256)."""
    hasher = hashlib.sha256()
    for path, digest in sorted(sums.items()):
        hasher.update(f"{path}\0{digest}\n".encode())
    return hasher.hexdigest()[:16]


async def test_an_s3_prefix_is_fetched_verified_and_a_changed_object_makes_a_new_revision(
    start_agent, config: AgentConfig, s3_server: RunningS3, s3_bucket: str, tmp_path: Path,
    tiny: dict[str, bytes],
) -> None:  # fmt: skip
    sums = _upload(s3_server, s3_bucket, "models/tiny/", tiny)
    cfg = _s3_config(config, s3_server, s3_bucket, tmp_path / "s3-secret")
    running = await start_agent(cfg)
    uri = f"s3://{s3_bucket}/models/tiny/"
    await preload_all(running.stub, _request(uri))
    held = await _held(running.stub)
    first = _prefix_revision(sums)
    assert held.revision == first
    assert tree_bytes(Path(held.current_dir)) == tiny
    _no_partials(cfg)
    again = await preload_all(running.stub, _request(uri))
    assert again[-1].message == "already held"

    changed = {**tiny, "config.json": b'{"model_type": "tiny", "seed": 7}'}
    sums |= _upload(s3_server, s3_bucket, "models/tiny/", {"config.json": changed["config.json"]})
    await preload_all(running.stub, _request(uri))
    held = await _held(running.stub)
    assert held.revision == _prefix_revision(sums) != first
    shm = Path(cfg.shm_dir)
    assert current_target(shm, MODEL) == held.revision
    assert tree_bytes(model_base(shm, MODEL) / "current") == changed
    _no_partials(cfg)


async def test_s3_directory_errors_are_one_clear_status_each_and_leave_the_held_one_alone(
    start_agent, config: AgentConfig, s3_server: RunningS3, s3_bucket: str, tmp_path: Path,
    tiny: dict[str, bytes],
) -> None:  # fmt: skip
    _upload(s3_server, s3_bucket, "models/tiny/", tiny)
    for path, data in tiny.items():  # the same files, uploaded without SHA256 checksums
        s3_server.put(s3_bucket, "models/unsummed/" + path, data)
    s3_server.put(s3_bucket, "other/tiny/config.json", tiny["config.json"], with_sha256=True)
    secret_dir = tmp_path / "s3-secret"
    cfg = _s3_config(config, s3_server, s3_bucket, secret_dir)
    running = await start_agent(cfg)
    await preload_all(running.stub, _request(f"s3://{s3_bucket}/models/tiny/"))
    revision = (await _held(running.stub)).revision
    shm, cache = Path(cfg.shm_dir), Path(cfg.cache_dir)
    cached = leftovers(cache)

    def unchanged() -> None:
        assert current_target(shm, MODEL) == revision
        names = sorted(p.name for p in model_base(shm, MODEL).iterdir())
        assert [n for n in names if not n.startswith(".")] == sorted(["current", revision])
        assert leftovers(cache) == cached
        _no_partials(cfg)

    async def refused(uri: str, code: grpc.StatusCode, needle: str) -> None:
        details = await refused_preload(running.stub, _request(uri), code)
        print(f"{uri}: {code.name}: {details}")
        assert needle in details
        unchanged()

    await refused(f"s3://{s3_bucket}/other/tiny/", CODE.PERMISSION_DENIED, "allowed_buckets")
    await refused(f"s3://{s3_bucket}/models/missing/", CODE.NOT_FOUND, "no objects")
    await refused("s3://no-such-bucket-x/models/tiny/", CODE.PERMISSION_DENIED, "allowed_buckets")
    await refused(f"s3://{s3_bucket}/models/unsummed/", CODE.INVALID_ARGUMENT, "no checksum")
    (secret_dir / "AWS_SECRET_ACCESS_KEY").write_text("not-the-secret")
    await refused(f"s3://{s3_bucket}/models/tiny/", CODE.PERMISSION_DENIED,
                  f"access key {s3_server.access_key}")  # fmt: skip
    (secret_dir / "AWS_SECRET_ACCESS_KEY").unlink()
    await refused(f"s3://{s3_bucket}/models/tiny/", CODE.FAILED_PRECONDITION,
                  "AWS_SECRET_ACCESS_KEY")  # fmt: skip
