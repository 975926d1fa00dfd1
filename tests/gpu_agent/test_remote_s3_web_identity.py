"""s3:// sources with web identity (EKS IRSA) against a real MinIO that serves STS.

MinIO implements ``AssumeRoleWithWebIdentity`` when it is given an OpenID provider; here that is
:mod:`tests.harness.fake_oidc`, whose tokens carry a ``policy`` claim naming one of MinIO's built-in
policies. The agent reads the token file named by ``AWS_WEB_IDENTITY_TOKEN_FILE`` in the
``environ`` it is given (``os.environ`` is never changed), exchanges it, caches the temporary
credentials, and exchanges again (re-reading the file) shortly before they expire.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from common.errors import FailedPrecondition, PermissionDenied, TemporaryError
from gpu_agent import remote
from gpu_agent.config import S3SourcesConfig
from gpu_agent.remote import s3 as s3_remote
from gpu_agent.remote.web_identity import REFRESH_BEFORE, CredentialCache
from tests.gpu_agent.test_remote_s3 import (
    MIB,
    RecordingSession,
    fetch,
    fetcher,
    policy,
    remote_config,
)
from tests.harness.fake_oidc import FakeOidc, RsaKey, run_fake_oidc
from tests.harness.s3 import RunningS3, free_port, run_s3_server

# MinIO ignores the role ARN when the token's claim names the policy, but the variable must be
# set for the agent to use web identity at all (as the AWS SDKs require).
ROLE_ARN = "arn:minio:iam:::role/dummy"
# MinIO's built-in "readonly" has no s3:ListBucket, which listing a prefix needs.
POLICY = "readwrite"


@pytest.fixture(scope="module")
def oidc() -> Iterator[FakeOidc]:
    with run_fake_oidc() as provider:
        yield provider


@pytest.fixture(scope="module")
def sts_s3(oidc: FakeOidc) -> Iterator[RunningS3]:
    """A MinIO that trusts ``oidc``'s tokens and takes their ``policy`` claim as the policy."""
    with run_s3_server(
        {
            "MINIO_IDENTITY_OPENID_CONFIG_URL": oidc.discovery_url,
            "MINIO_IDENTITY_OPENID_CLIENT_ID": oidc.audience,
            "MINIO_IDENTITY_OPENID_CLAIM_NAME": "policy",
        }
    ) as server:
        yield server


@pytest.fixture
def bucket(sts_s3: RunningS3, request: pytest.FixtureRequest) -> str:
    name = (
        "irsa-" + hashlib.sha1(request.node.name.encode(), usedforsecurity=False).hexdigest()[:12]
    )
    sts_s3.create_bucket(name)
    return name


def irsa_environ(token_file: Path) -> dict[str, str]:
    """What EKS IRSA's webhook puts in a pod (and no static keys)."""
    return {"AWS_ROLE_ARN": ROLE_ARN, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)}


class OfflineSession(RecordingSession):
    """Records each request and sends none (AWS is not reachable from tests)."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.sent.append((str(method), str(url), None))
        raise requests.ConnectionError(f"{url}: the test is offline")


def sts_calls(session: RecordingSession, s3: RunningS3) -> int:
    return sum(1 for m, url, _ in session.sent if m == "POST" and url == s3.endpoint + "/")


def test_web_identity_lists_a_prefix_and_downloads_a_verified_object(
    sts_s3: RunningS3, oidc: FakeOidc, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(2 * MIB + 7)
    sha = sts_s3.put(bucket, "llm/model.safetensors", data)
    sts_s3.put(bucket, "llm/config.json", b"{}")
    token_file = tmp_path / "token"
    token_file.write_text(oidc.token(policy=POLICY))
    environ = irsa_environ(token_file)
    config = remote_config(sts_s3, bucket)

    listed = remote.expand(f"s3://{bucket}/llm/", config, environ=environ)
    source = policy(config).check(f"s3://{bucket}/llm/model.safetensors", sha)
    dest = tmp_path / "cache" / "model.safetensors"
    size, digest = fetch(fetcher(config, environ), source, dest)

    assert [(f.path, f.size) for f in listed] == [
        ("config.json", 2),
        ("model.safetensors", len(data)),
    ]
    assert "X-Amz-Security-Token=" in listed[0].url
    assert (size, digest) == (len(data), sha)
    assert dest.read_bytes() == data


def test_one_exchange_serves_many_requests(
    sts_s3: RunningS3, oidc: FakeOidc, bucket: str, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        sts_s3.put(bucket, f"m/{name}", name.encode())
    token_file = tmp_path / "token"
    token_file.write_text(oidc.token(policy=POLICY))
    session, cache = RecordingSession(), CredentialCache()
    config = sts_s3.config(allowed_buckets=[bucket])

    for _ in range(2):  # a client per request, as the agent makes them; the cache outlives them
        client = s3_remote.S3Client(
            config, session=session, environ=irsa_environ(token_file), credential_cache=cache
        )
        files = client.expand(s3_remote.S3Location(bucket, "m/"))  # a listing and three HEADs
        assert [f.path for f in files] == ["a", "b", "c"]

    assert sts_calls(session, sts_s3) == 1
    assert len(session.sent) == 1 + 2 * 4


def test_credentials_are_exchanged_again_before_expiry_with_the_token_file_reread(
    sts_s3: RunningS3, oidc: FakeOidc, bucket: str, tmp_path: Path
) -> None:
    sts_s3.put(bucket, "m/a", b"a")
    token_file = tmp_path / "token"
    token_file.write_text(oidc.token(policy=POLICY))
    now = [dt.datetime.now(dt.UTC)]
    session, cache = RecordingSession(), CredentialCache()
    config = sts_s3.config(allowed_buckets=[bucket], web_identity_duration_s=900)
    client = s3_remote.S3Client(
        config, session=session, environ=irsa_environ(token_file), clock=lambda: now[0],
        credential_cache=cache,
    )  # fmt: skip

    first = client.credentials()
    # The kubelet rotates the token; until the credentials near their end the file is not read.
    token_file.write_text(oidc.token(policy=POLICY, key=dataclasses.replace(
        RsaKey.generate(), kid=oidc.key.kid)))  # fmt: skip
    now[0] += dt.timedelta(seconds=900) - REFRESH_BEFORE - dt.timedelta(seconds=60)
    assert client.credentials() == first
    assert sts_calls(session, sts_s3) == 1

    now[0] += dt.timedelta(seconds=120)  # now within REFRESH_BEFORE of the expiry
    with pytest.raises(PermissionDenied):  # the rotated file was read: here a bad token
        client.credentials()
    token_file.write_text(oidc.token(policy=POLICY))
    second = client.credentials()

    assert sts_calls(session, sts_s3) == 3
    assert second is not None
    assert first is not None
    assert second.access_key_id != first.access_key_id
    # The fresh credentials work (a client at the real time, sharing the cache).
    real = s3_remote.S3Client(config, environ=irsa_environ(token_file), credential_cache=cache)
    assert real.credentials() == second
    assert [o.key for o in real.list_objects(s3_remote.S3Location(bucket, "m/"))] == ["m/a"]


def test_a_token_signed_by_another_key_is_permission_denied_with_stss_code(
    sts_s3: RunningS3, oidc: FakeOidc, bucket: str, tmp_path: Path
) -> None:
    forged = oidc.token(policy=POLICY, key=dataclasses.replace(RsaKey.generate(), kid=oidc.key.kid))
    token_file = tmp_path / "token"
    token_file.write_text(forged)
    client = s3_remote.S3Client(
        sts_s3.config(allowed_buckets=[bucket]), environ=irsa_environ(token_file),
        credential_cache=CredentialCache(),
    )  # fmt: skip

    with pytest.raises(PermissionDenied) as caught:
        client.list_objects(s3_remote.S3Location(bucket, ""))

    message = str(caught.value)
    assert "InvalidParameterValue" in message  # MinIO's code for a token it cannot verify
    assert ROLE_ARN in message
    assert str(token_file) in message
    assert forged not in message
    assert forged.split(".")[2] not in message


def test_a_missing_token_file_is_failed_precondition_naming_it(
    sts_s3: RunningS3, bucket: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-token"
    session = RecordingSession()
    client = s3_remote.S3Client(
        sts_s3.config(allowed_buckets=[bucket]), session=session,
        environ=irsa_environ(missing), credential_cache=CredentialCache(),
    )  # fmt: skip

    with pytest.raises(FailedPrecondition, match=str(missing)):
        client.resolve(s3_remote.S3Location(bucket, "x"))
    assert session.sent == []


def test_static_keys_in_the_environment_win_over_web_identity(
    sts_s3: RunningS3, bucket: str, tmp_path: Path
) -> None:
    session = RecordingSession()
    environ = {**irsa_environ(tmp_path / "no-such-token"), **sts_s3.environ()}
    client = s3_remote.S3Client(
        sts_s3.config(allowed_buckets=[bucket]), session=session, environ=environ,
        credential_cache=CredentialCache(),
    )  # fmt: skip

    assert client.list_objects(s3_remote.S3Location(bucket, "")) == []
    assert sts_calls(session, sts_s3) == 0


def test_an_unreachable_sts_is_a_temporary_error(oidc: FakeOidc, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(oidc.token(policy=POLICY))
    dead = f"http://127.0.0.1:{free_port()}"
    config = S3SourcesConfig(endpoint=dead, sts_endpoint=dead)
    client = s3_remote.S3Client(
        config, environ=irsa_environ(token_file), credential_cache=CredentialCache(), timeout_s=5
    )

    with pytest.raises(TemporaryError, match="cannot reach STS"):
        client.credentials()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "https://sts.eu-west-1.amazonaws.com"),
        ({"endpoint": "http://minio:9000"}, "http://minio:9000"),
        (
            {"endpoint": "http://minio:9000", "sts_endpoint": "https://sts.corp/"},
            "https://sts.corp",
        ),
    ],
)
def test_the_sts_endpoint_defaults_to_the_s3_endpoint_else_regional_aws(
    settings: dict[str, str], expected: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-a-jwt")
    config = S3SourcesConfig.model_validate({"region": "eu-west-1", **settings})
    session = OfflineSession()
    client = s3_remote.S3Client(
        config, session=session, environ=irsa_environ(token_file),
        credential_cache=CredentialCache(),
    )  # fmt: skip

    with pytest.raises(TemporaryError):
        client.credentials()
    assert [(m, url) for m, url, _ in session.sent] == [("POST", expected + "/")]
