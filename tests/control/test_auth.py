"""Credentials: token configuration and files, and mutual TLS with real certificates (openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from common.errors import InvalidInput, PermissionDenied, TemporaryError
from prewarm.control.auth import Authenticator
from prewarm.control.client import DEFAULT_SERVER, ControlClient
from prewarm.control.config import ControlConfig, Scope
from prewarm.settings import load_settings
from tests.control.conftest import start_server, stop_server


def test_tokens_from_inline_secrets_and_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "ci-token"
    secret_file.write_text("ci-0123456789abcdef-secret\n")
    config = ControlConfig.model_validate(
        {
            "auth": {
                "tokens": [
                    {"name": "oncall", "scope": "write", "token": "oncall-0123456789abcdef"},
                    {"name": "ci", "file": str(secret_file)},
                ]
            }
        }
    )
    authenticator = Authenticator.from_config(config)
    ci = authenticator.authenticate([("authorization", "Bearer ci-0123456789abcdef-secret")], {})
    assert (ci.name, ci.scope) == ("ci", Scope.READ)
    oncall = authenticator.authenticate([("authorization", b"Bearer oncall-0123456789abcdef")], {})
    assert oncall.allows(Scope.WRITE)
    assert not ci.allows(Scope.WRITE)
    assert "oncall-0123456789abcdef" not in repr(config)  # SecretStr never prints the secret
    with pytest.raises(PermissionDenied, match="not recognised"):
        authenticator.authenticate([("authorization", "Bearer ci-0123456789abcdef-secreT")], {})


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"tokens": [{"name": "a", "token": "short"}]}, "shorter than 16"),
        ({"tokens": [{"name": "a", "file": "/nonexistent/token"}]}, "cannot read token file"),
        ({"tokens": []}, "no tokens are configured"),
    ],
)
def test_bad_token_configuration_is_refused_at_start(auth: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Authenticator.from_config(ControlConfig.model_validate({"auth": auth}))


def test_settings_validation_of_the_control_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREWARM_CONTROL__MAX_REPLICAS_PER_REQUEST", "16")
    monkeypatch.setenv(
        "PREWARM_CONTROL__AUTH__TOKENS",
        '[{"name": "oncall", "scope": "write", "token": "oncall-0123456789abcdef"}]',
    )
    settings = load_settings()
    assert settings.control.max_replicas_per_request == 16
    assert settings.control.auth.tokens[0].scope == Scope.WRITE
    for name, value, message in (
        ("PREWARM_CONTROL__MAX_REPLICAS_PER_REQUEST", "0", "max_replicas_per_request"),
        ("PREWARM_CONTROL__NAMESPACE", "Bad_NS", "not a valid DNS label"),
        ("PREWARM_CONTROL__LISTEN_ADDRESS", "50071", "must be host:port"),
        ("PREWARM_CONTROL__AUTH__MODE", "mtls", "needs tls.cert_file"),
        ("PREWARM_CONTROL__AUTH__TOKENS", '[{"name": "x"}]', "exactly one of 'token'"),
    ):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(InvalidInput, match=message):
                load_settings()


def test_the_control_api_has_a_port_of_its_own() -> None:
    # 9090 is Prometheus' port: the control API and the CLI's default --server use 50071.
    assert ControlConfig().listen_address == "0.0.0.0:50071"
    assert DEFAULT_SERVER == "127.0.0.1:50071"


def test_auth_off_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREWARM_CONTROL__AUTH__MODE", "none")
    assert load_settings().control.listen_address == "127.0.0.1:50071"  # the default, moved
    for address in ("127.0.0.1:7000", "[::1]:7000", "localhost:7000"):
        monkeypatch.setenv("PREWARM_CONTROL__LISTEN_ADDRESS", address)
        assert load_settings().control.listen_address == address
    for address in ("0.0.0.0:50071", "10.0.0.7:50071"):
        monkeypatch.setenv("PREWARM_CONTROL__LISTEN_ADDRESS", address)
        with pytest.raises(InvalidInput, match=r"set control\.listen_address to 127\.0\.0\.1"):
            load_settings()
    monkeypatch.setenv("PREWARM_CONTROL__AUTH__MODE", "token")
    assert load_settings().control.listen_address == "10.0.0.7:50071"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and three client certificates."""
    root = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=prewarm-test-ca", cwd=root)  # fmt: skip
    for name, subject, usage in (
        ("server", "/CN=prewarm", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("oncall", "/CN=oncall", "extendedKeyUsage=clientAuth\n"),
        ("grafana", "/CN=grafana", "extendedKeyUsage=clientAuth\n"),
        ("stranger", "/CN=stranger", "extendedKeyUsage=clientAuth\n"),
    ):
        (root / f"{name}.ext").write_text(usage)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
                 cwd=root)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=root)  # fmt: skip
    return root


def mtls_config(pki: Path, **scopes: str) -> ControlConfig:
    """Mutual TLS with the server certificate of ``pki``, the scope of each common name given."""
    subjects = [{"common_name": name, "scope": scope} for name, scope in scopes.items()]
    return ControlConfig.model_validate(
        {
            "listen_address": "127.0.0.1:0",
            "auth": {"mode": "mtls"},
            "tls": {
                "cert_file": str(pki / "server.crt"),
                "key_file": str(pki / "server.key"),
                "client_ca_file": str(pki / "ca.crt"),
                "subjects": subjects,
            },
        }
    )


def test_mutual_tls_scopes_by_common_name(pki: Path) -> None:
    handle = start_server(config=mtls_config(pki, oncall="write", grafana="read"))

    def client(name: str) -> ControlClient:
        return ControlClient(
            handle.address,
            tls_ca_file=pki / "ca.crt",
            tls_cert_file=pki / f"{name}.crt",
            tls_key_file=pki / f"{name}.key",
            timeout_s=5,
        )

    try:
        with client("oncall") as oncall:
            pin = oncall.pin("llama-70b")
        assert pin.created_by == "oncall"
        with client("grafana") as grafana:
            assert [p.model for p in grafana.list_requests().pins] == ["llama-70b"]
            with pytest.raises(PermissionDenied, match="'grafana' is read-only"):
                grafana.unpin("llama-70b")
        with client("stranger") as stranger, pytest.raises(PermissionDenied, match="subjects"):
            stranger.list_requests()
        # Without a client certificate the TLS handshake itself fails: no call gets through.
        anonymous = ControlClient(handle.address, tls_ca_file=pki / "ca.crt", timeout_s=3)
        with anonymous, pytest.raises(TemporaryError, match="cannot reach the control API"):
            anonymous.list_requests()
    finally:
        stop_server(handle)


def test_cli_over_mutual_tls(
    pki: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.control.test_cli import cli

    handle = start_server(config=mtls_config(pki, oncall="write"))
    tls = ["--tls-ca", str(pki / "ca.crt"), "--tls-cert", str(pki / "oncall.crt")]
    try:
        server = ["--server", handle.address]
        code, _, err = cli(["pin", "llama-70b", *server, *tls], capsys, monkeypatch, token=None)
        assert code == 2, err
        assert "give both --tls-cert and --tls-key" in err
        tls += ["--tls-key", str(pki / "oncall.key")]
        code, out, err = cli(["pin", "llama-70b", "--json", *server, *tls], capsys, monkeypatch)
        assert code == 0, err
        assert '"created_by": "oncall"' in out
    finally:
        stop_server(handle)
