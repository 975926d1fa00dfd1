"""The agent is closed by default: token auth unless configured otherwise, the token from the
settings or a mounted Secret's file (followed when it is rotated), reflection off."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr, ValidationError

from common.errors import InvalidInput
from gpu_agent.auth import BearerToken
from gpu_agent.config import AgentConfig, AuthConfig
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import StartAgent, expect


def test_defaults_are_token_auth_and_no_reflection() -> None:
    config = AgentConfig()
    assert config.auth.mode == "token"
    assert config.reflection is False
    with pytest.raises(InvalidInput, match=r"agent\.auth\.token_file"):
        BearerToken.from_config(config.auth)


def test_a_token_and_a_token_file_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        AuthConfig(token=SecretStr("a"), token_file="/run/secrets/token")


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_an_unreadable_or_empty_token_file_is_a_start_up_error(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidInput, match=str(path)):
        BearerToken.from_config(AuthConfig(token_file=str(path)))


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_the_token_file_is_followed_when_the_secret_is_rotated(
    start_agent: StartAgent, config: AgentConfig, tmp_path: Path
) -> None:
    # As a Kubernetes Secret volume lays it out: token -> ..data/token, ..data -> a timestamped
    # directory, and an update renames a new ..data link into place.
    secret = tmp_path / "secret"
    first = secret / "..2024_01"
    first.mkdir(parents=True)
    (first / "token").write_text("first-token\n")
    (secret / "..data").symlink_to(first.name)
    (secret / "token").symlink_to("..data/token")
    running = await start_agent(
        config.model_copy(update={"auth": AuthConfig(token_file=str(secret / "token"))})
    )
    status = pb.StatusRequest()
    await expect(grpc.StatusCode.UNAUTHENTICATED, running.stub.Status(status))
    await running.stub.Status(status, metadata=_bearer("first-token"))

    second = secret / "..2024_02"
    second.mkdir()
    (second / "token").write_text("second-token")
    (secret / "..data_tmp").symlink_to(second.name)
    os.replace(secret / "..data_tmp", secret / "..data")
    await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        running.stub.Status(status, metadata=_bearer("first-token")),
    )
    await running.stub.Status(status, metadata=_bearer("second-token"))

    # Mid-rotation (the file briefly missing) the last token read stays in force.
    (secret / "..data").unlink()
    await running.stub.Status(status, metadata=_bearer("second-token"))


async def test_reflection_needs_the_token_too(start_agent: StartAgent, config: AgentConfig) -> None:
    secured = config.model_copy(
        update={"auth": AuthConfig(token=SecretStr("s3cret")), "reflection": True}
    )
    running = await start_agent(secured)
    reflect = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED), (_bearer("s3cret"), None)):
        call = reflect.ServerReflectionInfo(metadata=metadata)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        if code is None:
            answer = await call.read()
            assert answer.list_services_response.service
            await call.done_writing()
        else:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
            assert refused.value.code() == code
