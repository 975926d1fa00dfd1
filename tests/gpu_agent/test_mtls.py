"""mTLS: the agent accepts only clients with a certificate signed by the configured CA."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from gpu_agent.config import AgentConfig, AuthConfig
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a rogue client's."""
    days = ("-days", "2")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-subj", "/CN=test-ca", *days, cwd=directory)  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
        ext = directory / f"{name}.ext"
        ext.write_text(extra + "\n" if extra else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-extfile", str(ext), *days,
                cwd=directory)  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
            "rogue.pem", "-subj", "/CN=rogue", *days, cwd=directory)  # fmt: skip


async def test_mtls_requires_a_client_certificate_from_the_ca(
    start_agent, config: AgentConfig, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    secured = config.model_copy(
        update={
            "auth": AuthConfig(
                mode="mtls",
                tls_cert_file=str(pki / "server.pem"),
                tls_key_file=str(pki / "server.key"),
                client_ca_file=str(pki / "ca.pem"),
            )
        }
    )
    running = await start_agent(secured)
    ca = (pki / "ca.pem").read_bytes()
    target = f"127.0.0.1:{running.port}"

    def credentials(name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / f"{name}.key").read_bytes(),
            certificate_chain=(pki / f"{name}.pem").read_bytes(),
        )

    async with grpc.aio.secure_channel(target, credentials("client")) as channel:
        status = await pb_grpc.GpuAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
        assert not status.gpu_available
    for creds in (credentials("rogue"), grpc.ssl_channel_credentials(root_certificates=ca)):
        async with grpc.aio.secure_channel(target, creds) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.GpuAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.GpuAgentStub(channel).Status(pb.StatusRequest(), timeout=10)
