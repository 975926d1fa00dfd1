"""Prometheus authentication: basic auth and mTLS against a real Prometheus (its own
``--web.config.file``), a tenant header and SigV4 through :class:`FakeAmpGateway` in front of one
(a real Prometheus cannot check those), and the SigV4 signer against AWS's published test vectors.

Secrets that come from files are read at each request: rotating the file (and the server's side)
is picked up by the same source, without a restart.
"""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pytest

from common.aws import sigv4
from common.aws.web_identity import CredentialCache
from common.errors import FailedPrecondition, PermissionDenied, TemporaryError
from common.ids import ModelId
from forecaster.config import PrometheusSourceConfig
from forecaster.sources.prometheus import PrometheusSource
from forecaster.sources.prometheus_auth import PrometheusAuth
from tests.forecaster.fake_prometheus import Behaviour, fake_prometheus
from tests.harness.exported_counters import ExportedCounter, write_openmetrics
from tests.harness.fake_amp_gateway import FakeAmpGateway, running
from tests.harness.prometheus import RunningPrometheus, prometheus_with_openmetrics

START = 1_700_000_000.0 - (1_700_000_000.0 % 3600)
MINUTES = 20
COUNTS = [float(10 + (m % 7)) for m in range(MINUTES)]
MODEL = ModelId("llama")


def _history(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "history.om.txt"
    series = ExportedCounter(
        "vllm:request_success_total",
        {"model_name": "llama", "engine": "0", "finished_reason": "stop"},
        COUNTS,
    )
    write_openmetrics([series], START, path)
    return path


def _read(source: PrometheusSource) -> np.ndarray:
    batch = source.fetch(start_s=START, end_s=START + MINUTES * 60)
    assert batch.models == (MODEL,)
    return batch.row(MODEL)


def _source(url: str, **settings: object) -> PrometheusSource:
    config = PrometheusSourceConfig.model_validate(
        {
            "url": url,
            "preset": "vllm",
            "timeout_s": 10.0,
            "retries": 0,
            "rate_window_s": 60,
            **settings,
        }
    )
    return PrometheusSource(config, history_window_s=MINUTES * 60.0)


def _bcrypt(password: str) -> str:
    # Prometheus's web config stores bcrypt hashes; the stdlib's crypt (glibc/libxcrypt) makes them
    # without adding a dependency. Cost 4, the minimum, keeps the test fast.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@pytest.mark.prometheus
@pytest.mark.acceptance_fleet
def test_basic_auth_against_a_real_prometheus_with_a_rotated_password_file(
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "secret" / "password"
    password_file.parent.mkdir()
    password_file.write_text("first-password\n", encoding="utf-8")
    web = {"basic_auth_users": {"prewarm": _bcrypt("first-password")}}
    ready = {"Authorization": _basic("prewarm", "first-password")}
    workdir = tmp_path / "prometheus"
    with prometheus_with_openmetrics(
        _history(workdir), workdir, web_config=web, ready_headers=ready
    ) as server:
        auth = {"username": "prewarm", "password_file": str(password_file)}
        source = _source(server.url, basic_auth=auth)
        np.testing.assert_allclose(_read(source), COUNTS, atol=1e-6)

        with pytest.raises(PermissionDenied, match="refused access"):
            _read(_source(server.url, basic_auth={"username": "prewarm", "password": "wrong"}))
        with pytest.raises(PermissionDenied):
            _read(_source(server.url))  # no credentials at all

        # Rotation: Prometheus re-reads its web config per request; the source its password file.
        _write_web(workdir, {"basic_auth_users": {"prewarm": _bcrypt("second-password")}})
        with pytest.raises(PermissionDenied):
            _read(source)
        password_file.write_text("second-password\n", encoding="utf-8")
        np.testing.assert_allclose(_read(source), COUNTS, atol=1e-6)


def _write_web(workdir: Path, config: dict[str, object]) -> None:
    import yaml

    (workdir / "web.yml").write_text(yaml.safe_dump(config), encoding="utf-8")


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                  "-subj", "/CN=prewarm-test-ca")  # fmt: skip
        self._leaf("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        self._leaf("client", "extendedKeyUsage=clientAuth\n")

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def _leaf(self, name: str, extensions: str) -> None:
        (self.dir / f"{name}.ext").write_text(extensions, encoding="utf-8")
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.csr",
                  "-subj", f"/CN=prewarm-{name}")  # fmt: skip
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                  "-extfile", f"{name}.ext")  # fmt: skip

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            ["openssl", *args], cwd=self.dir, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.fail(f"openssl {args[0]} failed: {done.stderr}", pytrace=False)


@pytest.fixture
def mtls_prometheus(tmp_path: Path) -> Iterator[tuple[RunningPrometheus, Pki]]:
    pki = Pki(tmp_path / "pki")
    web = {
        "tls_server_config": {
            "cert_file": pki.path("server.crt"),
            "key_file": pki.path("server.key"),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": pki.path("ca.crt"),
        }
    }
    context = ssl.create_default_context(cafile=pki.path("ca.crt"))
    context.load_cert_chain(pki.path("client.crt"), pki.path("client.key"))
    workdir = tmp_path / "prometheus"
    with prometheus_with_openmetrics(
        _history(workdir), workdir, web_config=web, ready_context=context
    ) as server:
        yield server, pki


@pytest.mark.prometheus
@pytest.mark.acceptance_fleet
def test_mtls_against_a_real_prometheus_that_requires_a_client_certificate(
    mtls_prometheus: tuple[RunningPrometheus, Pki],
) -> None:
    server, pki = mtls_prometheus
    assert server.url.startswith("https://")
    tls = {
        "ca_file": pki.path("ca.crt"),
        "cert_file": pki.path("client.crt"),
        "key_file": pki.path("client.key"),
    }
    np.testing.assert_allclose(_read(_source(server.url, tls=tls)), COUNTS, atol=1e-6)

    # Without the client certificate the TLS handshake is refused; without the CA the server's
    # certificate is not trusted. Both are failures to reach it, with the reason in the message.
    with pytest.raises(TemporaryError, match=r"unreachable|unreadable"):
        _read(_source(server.url, tls={"ca_file": pki.path("ca.crt")}))
    with pytest.raises(TemporaryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        _read(
            _source(
                server.url,
                tls={"cert_file": pki.path("client.crt"), "key_file": pki.path("client.key")},
            )
        )


@pytest.fixture
def plain_prometheus(tmp_path: Path) -> Iterator[RunningPrometheus]:
    workdir = tmp_path / "prometheus"
    with prometheus_with_openmetrics(_history(workdir), workdir) as server:
        yield server


@pytest.mark.prometheus
@pytest.mark.acceptance_fleet
@pytest.mark.parametrize("header", ["X-Scope-OrgID", "THANOS-TENANT"])
def test_tenant_header_through_a_tenant_checking_gateway(
    plain_prometheus: RunningPrometheus, tmp_path: Path, header: str
) -> None:
    gateway = FakeAmpGateway(upstream=plain_prometheus.url, tenant_header=header, tenant="team-a")
    tenant_file = tmp_path / "tenant"
    tenant_file.write_text("team-a\n", encoding="utf-8")
    with running(gateway):
        source = _source(gateway.url, tenant={"id_file": str(tenant_file), "header": header})
        np.testing.assert_allclose(_read(source), COUNTS, atol=1e-6)
        assert all(r[header.lower()] == "team-a" for r in gateway.requests)

        tenant_file.write_text("team-b\n", encoding="utf-8")  # re-read: now the wrong tenant
        with pytest.raises(PermissionDenied):
            _read(source)
        with pytest.raises(PermissionDenied):
            _read(_source(gateway.url))  # no tenant at all
    assert gateway.refusals == [f"401 missing or wrong {header}"] * 2


def _credentials_dir(directory: Path, key: str, secret: str, token: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "AWS_ACCESS_KEY_ID").write_text(key + "\n", encoding="utf-8")
    (directory / "AWS_SECRET_ACCESS_KEY").write_text(secret + "\n", encoding="utf-8")
    if token is not None:
        (directory / "AWS_SESSION_TOKEN").write_text(token + "\n", encoding="utf-8")
    return directory


@pytest.mark.prometheus
@pytest.mark.acceptance_fleet
def test_sigv4_through_a_fake_amp_gateway_with_rotated_and_temporary_credentials(
    plain_prometheus: RunningPrometheus, tmp_path: Path
) -> None:
    gateway = FakeAmpGateway(
        upstream=plain_prometheus.url,
        region="eu-west-1",
        secrets={"AKIDPREWARM": "first/secret+key"},
        tenant_header=None,
    )
    credentials = _credentials_dir(tmp_path / "aws", "AKIDPREWARM", "first/secret+key")
    sigv4_settings = {"region": "eu-west-1", "credentials_dir": str(credentials)}
    with running(gateway):
        # AMP's query path is /workspaces/<id>/api/v1/query_range; the gateway serves any path
        # prefix by forwarding the path as it is, so the workspace part is left out here.
        source = _source(gateway.url, sigv4=sigv4_settings)
        np.testing.assert_allclose(_read(source), COUNTS, atol=1e-6)
        assert gateway.refusals == []
        assert all(r["authorization"].startswith("AWS4-HMAC-SHA256 ") for r in gateway.requests)

        # The key is rotated: the server first, then the mounted Secret; the source follows.
        gateway.secrets = {"AKIDPREWARM": "second-secret"}
        with pytest.raises(PermissionDenied, match="signature we calculated does not match"):
            _read(source)
        _credentials_dir(credentials, "AKIDPREWARM", "second-secret")
        np.testing.assert_allclose(_read(source), COUNTS, atol=1e-6)

        # Temporary credentials sign their session token too.
        gateway.secrets = {"ASIATEMP": "temp-secret"}
        gateway.session_tokens = {"ASIATEMP": "session-token-1"}
        _credentials_dir(credentials, "ASIATEMP", "temp-secret", "session-token-1")
        np.testing.assert_allclose(_read(source), COUNTS, atol=1e-6)
        assert "x-amz-security-token" in gateway.requests[-1]["authorization"]

        # Wrong region scope: refused, not silently accepted.
        wrong = _source(gateway.url, sigv4={**sigv4_settings, "region": "us-east-1"})
        with pytest.raises(PermissionDenied):
            _read(wrong)


def test_sigv4_headers_match_the_aws_test_suite() -> None:
    # aws-sig-v4-test-suite: get-vanilla and get-vanilla-query-order-key-case.
    credentials = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    now = dt.datetime(2015, 8, 30, 12, 36, tzinfo=dt.UTC)
    cases = {
        "https://example.amazonaws.com/": (
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        ),
        "https://example.amazonaws.com/?Param2=value2&Param1=value1": (
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ),
    }
    for url, signature in cases.items():
        headers = sigv4.sign_headers(
            "GET", url, credentials, region="us-east-1", service="service", now=now
        )
        assert headers["X-Amz-Date"] == "20150830T123600Z"
        assert headers["Authorization"] == (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={signature}"
        )


def test_missing_aws_credentials_say_where_to_put_them(tmp_path: Path) -> None:
    config = PrometheusSourceConfig.model_validate(
        {"url": "http://127.0.0.1:1", "retries": 0,
         "sigv4": {"region": "eu-west-1", "credentials_dir": str(tmp_path / "none")}}
    )  # fmt: skip
    source = PrometheusSource(config)
    with pytest.raises(FailedPrecondition, match="AWS_ACCESS_KEY_ID"):
        source.fetch(start_s=0, end_s=600)


class FakeSts:
    """A fake of AWS STS's ``AssumeRoleWithWebIdentity`` (a cloud API that cannot run here): it
    accepts one token and hands out fixed temporary credentials valid for an hour."""

    def __init__(self, token: str, credentials: sigv4.Credentials) -> None:
        self.token = token
        self.credentials = credentials
        self.forms: list[dict[str, str]] = []
        self.url = ""

    @contextmanager
    def serve(self) -> Iterator[FakeSts]:
        sts = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet in tests
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                sts.forms.append(form)
                ok = (
                    form.get("Action") == "AssumeRoleWithWebIdentity"
                    and form.get("WebIdentityToken") == sts.token
                )
                expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
                body = (
                    "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>"
                    f"<Credentials><AccessKeyId>{sts.credentials.access_key_id}</AccessKeyId>"
                    f"<SecretAccessKey>{sts.credentials.secret_access_key}</SecretAccessKey>"
                    f"<SessionToken>{sts.credentials.session_token}</SessionToken>"
                    f"<Expiration>{expires}</Expiration></Credentials>"
                    "</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
                    if ok
                    else "<ErrorResponse><Error><Code>InvalidIdentityToken</Code>"
                    "<Message>bad token</Message></Error></ErrorResponse>"
                ).encode()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


@pytest.mark.prometheus
@pytest.mark.acceptance_fleet
def test_sigv4_with_web_identity_credentials(
    plain_prometheus: RunningPrometheus, tmp_path: Path
) -> None:
    temporary = sigv4.Credentials("ASIAIRSA", "irsa-secret", "irsa-session-token")
    gateway = FakeAmpGateway(
        upstream=plain_prometheus.url,
        secrets={"ASIAIRSA": "irsa-secret"},
        session_tokens={"ASIAIRSA": "irsa-session-token"},
    )
    token_file = tmp_path / "token"
    token_file.write_text("projected-sa-token\n", encoding="utf-8")
    environ = {
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/prewarm",
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
    }
    with FakeSts("projected-sa-token", temporary).serve() as sts, running(gateway):
        config = PrometheusSourceConfig.model_validate(
            {"url": gateway.url, "preset": "vllm", "retries": 0, "rate_window_s": 60,
             "sigv4": {"region": "eu-west-1", "sts_endpoint": sts.url}}
        )  # fmt: skip
        auth = PrometheusAuth(config, environ=environ, sts_cache=CredentialCache())
        source = PrometheusSource(config, history_window_s=MINUTES * 60.0, auth=auth)
        np.testing.assert_allclose(_read(source), COUNTS, atol=1e-6)
        _read(source)
    assert gateway.refusals == []
    assert len(sts.forms) == 1  # cached until shortly before they expire
    assert sts.forms[0]["RoleSessionName"] == "prewarm-forecaster"


def test_a_bearer_token_file_is_read_at_each_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n", encoding="utf-8")
    behaviour = Behaviour(answers=["ok"])
    with fake_prometheus(behaviour) as url:
        config = PrometheusSourceConfig(url=url, bearer_token_file=str(token), retries=0)
        source = PrometheusSource(config)
        source.fetch(start_s=0, end_s=600)
        token.write_text("second\n", encoding="utf-8")
        source.fetch(start_s=0, end_s=600)
    assert behaviour.authorizations == ["Bearer first", "Bearer second"]
