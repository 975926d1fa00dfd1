"""s3:// sources against a real S3 server (MinIO, built by hack/testenv.d/30-s3.sh).

Listing, presigned ranged downloads through the agent's Fetcher, resume of a kept ``.partial``
after a dropped connection, and the errors: wrong credentials, missing object or bucket, checksum
mismatch -- each leaving nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TemporaryError,
)
from gpu_agent import remote
from gpu_agent.config import RemoteSourcesConfig
from gpu_agent.control import LoadControl
from gpu_agent.remote import s3 as s3_remote
from gpu_agent.remote import sigv4
from gpu_agent.sources import CheckedSource, Fetcher, SourcePolicy
from tests.harness import s3 as s3_harness
from tests.harness.s3 import RunningS3, cutting_relay

# The real server's fixtures, found by pytest under these module-level names.
s3_server = s3_harness.s3_server
s3_bucket = s3_harness.s3_bucket

MIB = 1024**2


class RecordingSession(requests.Session):
    """A real session that remembers each request's method, URL and Range header."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, str | None]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        headers = kwargs.get("headers") or {}
        self.sent.append((str(method), str(url), headers.get("Range")))
        return super().request(method, url, *args, **kwargs)

    def ranges(self) -> list[str]:
        return [r for m, _, r in self.sent if m == "GET" and r is not None]


def remote_config(s3: RunningS3, bucket: str, **s3_settings: object) -> RemoteSourcesConfig:
    values: dict[str, object] = {
        "endpoint": s3.endpoint, "region": "us-east-1", "allowed_buckets": [bucket],
    }  # fmt: skip
    values.update(s3_settings)
    return RemoteSourcesConfig.model_validate({"s3": values})


def policy(config: RemoteSourcesConfig, *, require_sha256: bool = True) -> SourcePolicy:
    return SourcePolicy(
        ["file", "https"], file_roots=[], http_prefixes=[], require_sha256=require_sha256,
        remote=config,
    )  # fmt: skip


def fetcher(
    config: RemoteSourcesConfig,
    environ: dict[str, str],
    session: requests.Session | None = None,
    *,
    parallel: int = 4,
) -> Fetcher:
    return Fetcher(
        session, parallel_ranges=parallel, range_bytes=MIB, timeout_s=10, remote=config,
        environ=environ,
    )  # fmt: skip


def fetch(f: Fetcher, source: CheckedSource, dest: Path) -> tuple[int, str]:
    return f.fetch(source, dest, control=LoadControl(), progress=lambda _n: None)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ------------------------------------------------------------------------------ signing, pure


def test_presigned_url_matches_the_aws_documentation_example() -> None:
    # "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", S3 API docs.
    credentials = sigv4.Credentials(
        "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    )
    url = sigv4.presign_url(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", credentials,
        region="us-east-1", now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC), expires_s=86400,
    )  # fmt: skip
    assert url.endswith(
        "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )
    assert "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request" in url


def test_session_token_is_signed_into_the_url() -> None:
    credentials = sigv4.Credentials("AKID", "secret", "token/with+chars")
    url = sigv4.presign_url(
        "GET", "http://127.0.0.1:9000/b/k", credentials, region="us-east-1",
        now=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), expires_s=60,
    )  # fmt: skip
    assert "X-Amz-Security-Token=token%2Fwith%2Bchars" in url


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("s3://Bad_Bucket/k", InvalidInput),
        ("s3://b/k", InvalidInput),  # too short a bucket name
        ("s3://bucket/a/../b", PermissionDenied),
        ("s3://bucket/k?versionId=1", InvalidInput),
    ],
)
def test_malformed_s3_uris_are_refused(uri: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        s3_remote.parse_s3_uri(uri)


def test_addressing_is_virtual_hosted_on_aws_and_path_style_elsewhere() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"}
    aws = s3_remote.S3Client(RemoteSourcesConfig().s3.model_copy(update={"region": "eu-west-1"}),
                             environ=env)  # fmt: skip
    assert aws.presign("GET", "models", "a b/c").startswith(
        "https://models.s3.eu-west-1.amazonaws.com/a%20b/c?"
    )
    assert aws.presign("GET", "my.models", "c").startswith(
        "https://s3.eu-west-1.amazonaws.com/my.models/c?"
    )
    custom = s3_remote.S3Client(
        RemoteSourcesConfig.model_validate({"s3": {"endpoint": "http://minio:9000"}}).s3,
        environ=env,
    )
    assert custom.presign("GET", "models", "c").startswith("http://minio:9000/models/c?")


# ------------------------------------------------------------------------------ the policy


def test_s3_is_refused_until_buckets_are_allowed() -> None:
    with pytest.raises(PermissionDenied, match="allowed_buckets is empty"):
        policy(RemoteSourcesConfig()).check("s3://models/m.safetensors", "a" * 64)


def test_policy_checks_bucket_prefix_and_sha256() -> None:
    config = RemoteSourcesConfig.model_validate({"s3": {"allowed_buckets": ["models/llama/"]}})
    checked = policy(config).check("s3://models/llama/m.safetensors", "A" * 64)
    assert (checked.scheme, checked.sha256, checked.name) == ("s3", "a" * 64, "m.safetensors")
    assert not checked.directory
    assert policy(config).check("s3://models/llama/", "").directory
    with pytest.raises(PermissionDenied, match="allowed_buckets"):
        policy(config).check("s3://models/other/m.safetensors", "a" * 64)
    with pytest.raises(PermissionDenied, match="allowed_buckets"):
        policy(config).check("s3://other-bucket/llama/m.safetensors", "a" * 64)
    with pytest.raises(InvalidInput, match="requires one"):
        policy(config).check("s3://models/llama/m.safetensors", "")


def test_bad_bucket_settings_are_refused_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match=r"remote\.s3\.allowed_buckets"):
        RemoteSourcesConfig.model_validate({"s3": {"allowed_buckets": ["Not_A_Bucket"]}})
    with pytest.raises(ValueError, match=r"remote\.s3\.endpoint"):
        RemoteSourcesConfig.model_validate({"s3": {"endpoint": "minio:9000/path"}})


# ------------------------------------------------------------------------------ listing


def test_expand_lists_a_prefix_with_sizes_etags_and_stored_checksums(
    s3_server: RunningS3, s3_bucket: str
) -> None:
    weights = os.urandom(3 * MIB + 7)
    s3_server.put(s3_bucket, "llama/model.safetensors", weights)
    config_sha = s3_server.put(s3_bucket, "llama/config.json", b'{"a": 1}', with_sha256=True)
    s3_server.put(s3_bucket, "llama/tokenizer/vocab.txt", b"a\nb\n")
    s3_server.put(s3_bucket, "llama/tokenizer/", b"")  # a console's "folder" marker
    s3_server.put(s3_bucket, "llama-other/x", b"x")

    files = remote.expand(
        f"s3://{s3_bucket}/llama/", remote_config(s3_server, s3_bucket),
        environ=s3_server.environ(),
    )  # fmt: skip

    by_path = {f.path: f for f in files}
    assert sorted(by_path) == ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
    assert by_path["model.safetensors"].size == len(weights)
    assert by_path["model.safetensors"].uri == f"s3://{s3_bucket}/llama/model.safetensors"
    assert by_path["model.safetensors"].sha256 is None  # uploaded without a checksum
    assert by_path["config.json"].sha256 == config_sha  # x-amz-checksum-sha256, verified later
    md5 = hashlib.md5(weights, usedforsecurity=False).hexdigest()
    assert by_path["model.safetensors"].etag == f'"{md5}"'
    assert all("X-Amz-Signature=" in f.url and not f.headers for f in files)


def test_listing_follows_continuation_tokens(s3_server: RunningS3, s3_bucket: str) -> None:
    for index in range(5):
        s3_server.put(s3_bucket, f"m/shard-{index}", b"x" * index)
    client = s3_remote.S3Client(
        remote_config(s3_server, s3_bucket).s3, environ=s3_server.environ(), page_size=2
    )
    session = RecordingSession()
    client._session = session
    objects = client.list_objects(s3_remote.S3Location(s3_bucket, "m/"))
    assert [o.key for o in objects] == [f"m/shard-{i}" for i in range(5)]
    assert [o.size for o in objects] == list(range(5))
    pages = [url for method, url, _ in session.sent if method == "GET"]
    assert len(pages) == 3
    assert "continuation-token=" in pages[1]
    assert "continuation-token=" in pages[2]


def test_missing_prefix_and_bucket_are_not_found(s3_server: RunningS3, s3_bucket: str) -> None:
    config = remote_config(s3_server, s3_bucket)
    env = s3_server.environ()
    with pytest.raises(NotFound, match="has no objects"):
        remote.expand(f"s3://{s3_bucket}/nothing/", config, environ=env)
    missing = RemoteSourcesConfig.model_validate(
        {"s3": {"endpoint": s3_server.endpoint, "allowed_buckets": ["no-such-bucket"]}}
    )
    with pytest.raises(NotFound, match="no such bucket"):
        remote.expand("s3://no-such-bucket/m/", missing, environ=env)
    with pytest.raises(NotFound, match="no such"):
        remote.resolve("s3://no-such-bucket/m/x", missing, environ=env)


# ------------------------------------------------------------------------------ fetching


def test_fetch_downloads_in_parallel_ranges_and_verifies(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(5 * MIB + 123)
    sha = s3_server.put(s3_bucket, "m/model.safetensors", data)
    config = remote_config(s3_server, s3_bucket)
    source = policy(config).check(f"s3://{s3_bucket}/m/model.safetensors", sha)
    session = RecordingSession()
    dest = tmp_path / "cache" / "model.safetensors"
    progress: list[int] = []

    size, digest = fetcher(config, s3_server.environ(), session).fetch(
        source, dest, control=LoadControl(), progress=progress.append
    )

    assert (size, digest) == (len(data), sha)
    assert dest.read_bytes() == data
    assert sum(progress) == len(data)
    assert sorted(session.ranges()) == sorted(
        f"bytes={s}-{min(s + MIB, len(data)) - 1}" for s in range(0, len(data), MIB)
    )
    assert leftovers(dest.parent) == ["model.safetensors"]


def test_fetch_verifies_the_stored_checksum_without_a_request_sha256(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    sha = s3_server.put(s3_bucket, "m/config.json", b'{"x": 2}', with_sha256=True)
    s3_server.put(s3_bucket, "m/empty", b"", with_sha256=True)
    config = remote_config(s3_server, s3_bucket)
    relaxed = policy(config, require_sha256=False)
    f = fetcher(config, s3_server.environ())
    assert fetch(f, relaxed.check(f"s3://{s3_bucket}/m/config.json", ""), tmp_path / "c") == (
        8, sha,
    )  # fmt: skip
    assert fetch(f, relaxed.check(f"s3://{s3_bucket}/m/empty", ""), tmp_path / "e") == (
        0, hashlib.sha256(b"").hexdigest(),
    )  # fmt: skip


def test_checksum_mismatch_is_data_loss_and_leaves_nothing(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    s3_server.put(s3_bucket, "m/model.safetensors", os.urandom(2 * MIB + 1))
    config = remote_config(s3_server, s3_bucket)
    source = policy(config).check(f"s3://{s3_bucket}/m/model.safetensors", "b" * 64)
    with pytest.raises(DataLoss, match="checksum mismatch"):
        fetch(fetcher(config, s3_server.environ()), source, tmp_path / "model.safetensors")
    assert leftovers(tmp_path) == []


def test_wrong_credentials_are_one_clear_permission_error(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    sha = s3_server.put(s3_bucket, "m/model.safetensors", b"weights")
    config = remote_config(s3_server, s3_bucket)
    source = policy(config).check(f"s3://{s3_bucket}/m/model.safetensors", sha)
    wrong = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with pytest.raises(PermissionDenied) as refused:
        fetch(fetcher(config, wrong), source, tmp_path / "model.safetensors")
    message = str(refused.value)
    assert "SignatureDoesNotMatch" in message
    assert f"access key {s3_server.access_key} (from environment variables)" in message
    assert "not-the-secret" not in message
    unknown = {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "whatever-secret"}
    with pytest.raises(PermissionDenied, match="InvalidAccessKeyId"):
        fetch(fetcher(config, unknown), source, tmp_path / "model.safetensors")
    assert leftovers(tmp_path) == []


def test_missing_object_is_not_found_and_leaves_nothing(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    config = remote_config(s3_server, s3_bucket)
    source = policy(config).check(f"s3://{s3_bucket}/m/absent.safetensors", "a" * 64)
    with pytest.raises(NotFound, match="no such key"):
        fetch(fetcher(config, s3_server.environ()), source, tmp_path / "absent.safetensors")
    assert leftovers(tmp_path) == []


def test_credentials_come_from_the_secret_directory_first(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    sha = s3_server.put(s3_bucket, "m/x", b"secret-dir")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text(s3_server.access_key + "\n")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text(s3_server.secret_key + "\n")
    config = remote_config(s3_server, s3_bucket, credentials_dir=str(secret))
    source = policy(config).check(f"s3://{s3_bucket}/m/x", sha)
    wrong_env = {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    assert fetch(fetcher(config, wrong_env), source, tmp_path / "out" / "x") == (10, sha)

    (secret / "AWS_SECRET_ACCESS_KEY").unlink()
    with pytest.raises(FailedPrecondition, match="AWS_SECRET_ACCESS_KEY"):
        fetch(fetcher(config, s3_server.environ()), source, tmp_path / "out" / "y")
    with pytest.raises(FailedPrecondition, match="no S3 credentials"):
        fetch(fetcher(remote_config(s3_server, s3_bucket), {}), source, tmp_path / "out" / "z")
    assert leftovers(tmp_path / "out") == ["x"]


def test_temporary_credentials_with_a_session_token_are_accepted(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    sha = s3_server.put(s3_bucket, "m/x", b"sts")
    temporary = s3_server.assume_role()
    config = remote_config(s3_server, s3_bucket)
    source = policy(config).check(f"s3://{s3_bucket}/m/x", sha)
    assert fetch(fetcher(config, temporary), source, tmp_path / "x") == (3, sha)
    assert remote.expand(f"s3://{s3_bucket}/m/", config, environ=temporary)
    without_token = {k: v for k, v in temporary.items() if k != "AWS_SESSION_TOKEN"}
    with pytest.raises(PermissionDenied):
        fetch(fetcher(config, without_token), source, tmp_path / "y")
    assert leftovers(tmp_path) == ["x"]


def test_a_dropped_download_keeps_its_prefix_and_the_next_fetch_resumes(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(4 * MIB + 5)
    sha = s3_server.put(s3_bucket, "m/model.safetensors", data)
    dest = tmp_path / "model.safetensors"
    partial = tmp_path / "model.safetensors.partial"
    uri = f"s3://{s3_bucket}/m/model.safetensors"
    # The connection to the server breaks once 2.5 MiB went through: ranges 0 and 1 arrived.
    with cutting_relay(s3_server.endpoint, budget=MIB * 5 // 2) as relay:
        config = remote_config(s3_server, s3_bucket, endpoint=f"http://127.0.0.1:{relay.port}")
        source = policy(config).check(uri, sha)
        with pytest.raises(TemporaryError, match=r"broke off|cannot reach"):
            fetch(fetcher(config, s3_server.environ(), parallel=1), source, dest)
        assert not dest.exists()
        assert partial.read_bytes() == data[: 2 * MIB]
        assert (tmp_path / "model.safetensors.partial.resume").exists()

        relay.heal()
        session = RecordingSession()
        assert fetch(fetcher(config, s3_server.environ(), session), source, dest) == (
            len(data), sha,
        )  # fmt: skip
    assert dest.read_bytes() == data
    assert min(session.ranges()) == f"bytes={2 * MIB}-{3 * MIB - 1}"
    assert relay.passed < len(data) - MIB  # only the rest went over the wire again
    assert leftovers(tmp_path) == ["model.safetensors"]


def test_a_kept_prefix_of_an_object_that_changed_is_not_reused(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    s3_server.put(s3_bucket, "m/w", os.urandom(3 * MIB))
    dest = tmp_path / "w"
    uri = f"s3://{s3_bucket}/m/w"
    with cutting_relay(s3_server.endpoint, budget=MIB * 3 // 2) as relay:
        config = remote_config(s3_server, s3_bucket, endpoint=f"http://127.0.0.1:{relay.port}")
        relaxed = policy(config, require_sha256=False)
        with pytest.raises(TemporaryError):
            fetch(fetcher(config, s3_server.environ(), parallel=1), relaxed.check(uri, ""), dest)
        assert (tmp_path / "w.partial").stat().st_size == MIB
        relay.heal()
        replaced = os.urandom(3 * MIB)
        s3_server.put(s3_bucket, "m/w", replaced)  # a new ETag
        fetch(fetcher(config, s3_server.environ()), relaxed.check(uri, ""), dest)
    assert dest.read_bytes() == replaced
    assert leftovers(tmp_path) == ["w"]


def test_a_partial_without_a_resume_record_is_never_trusted(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(2 * MIB)
    sha = s3_server.put(s3_bucket, "m/w", data)
    (tmp_path / "w.partial").write_bytes(b"\0" * MIB)  # what a killed process may leave
    config = remote_config(s3_server, s3_bucket)
    source = policy(config).check(f"s3://{s3_bucket}/m/w", sha)
    assert fetch(fetcher(config, s3_server.environ()), source, tmp_path / "w") == (len(data), sha)
    assert leftovers(tmp_path) == ["w"]


def test_a_directory_is_expanded_before_it_is_fetched(
    s3_server: RunningS3, s3_bucket: str, tmp_path: Path
) -> None:
    config = remote_config(s3_server, s3_bucket)
    source = policy(config).check(f"s3://{s3_bucket}/m/", "")
    with pytest.raises(InvalidInput, match="expand it"):
        fetch(fetcher(config, s3_server.environ()), source, tmp_path / "m")
