"""How the Prometheus source proves who it is: bearer token, basic auth, a tenant header, SigV4.

Owns: a ``requests`` auth hook that sets the configured headers on every request, reading every
secret that comes from a file (a mounted Kubernetes Secret) again at each request so a rotated
Secret is picked up without a restart, and the AWS credentials chain for SigV4 (files in
``credentials_dir``, else the environment, else web identity). mTLS is the session's business
(``requests`` reads the certificate files whenever it opens a connection); see
:func:`configure_session`. Must not: retry, or put a secret in a message.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

from common.aws import sigv4
from common.aws.web_identity import DEFAULT_CACHE, CredentialCache, WebIdentity
from common.errors import FailedPrecondition
from forecaster.config import PrometheusSourceConfig, SigV4Config

CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SESSION_NAME = "prewarm-forecaster"


def read_secret_file(path: str, what: str) -> str:
    """The stripped contents of ``path``; :class:`FailedPrecondition` naming it (not its contents)
    when it is missing, unreadable or empty."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise FailedPrecondition(
            f"cannot read the {what} file {path}: {error.strerror or error}; mount the Secret there"
        ) from error
    if not value:
        raise FailedPrecondition(f"the {what} file {path} is empty")
    return value


def load_aws_credentials(
    config: SigV4Config,
    *,
    environ: Mapping[str, str],
    session: requests.Session,
    timeout_s: float,
    cache: CredentialCache = DEFAULT_CACHE,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> sigv4.Credentials:
    """Credentials in the AWS SDKs' order: ``credentials_dir`` files, the environment, web
    identity. :class:`FailedPrecondition` when none is configured (the deployment must change)."""
    if config.credentials_dir is not None:
        directory = Path(config.credentials_dir)
        values: dict[str, str] = {}
        for name in CREDENTIAL_NAMES:
            path = directory / name
            if path.exists():
                values[name] = read_secret_file(str(path), name)
        missing = [n for n in CREDENTIAL_NAMES[:2] if not values.get(n)]
        if missing:
            raise FailedPrecondition(
                f"forecaster.prometheus.sigv4.credentials_dir {directory} has no "
                f"{' and '.join(missing)}: mount a Secret with those keys there"
            )
        return sigv4.Credentials(
            values["AWS_ACCESS_KEY_ID"],
            values["AWS_SECRET_ACCESS_KEY"],
            values.get("AWS_SESSION_TOKEN") or None,
            origin=f"files in {directory}",
        )
    key = environ.get("AWS_ACCESS_KEY_ID", "").strip()
    secret = environ.get("AWS_SECRET_ACCESS_KEY", "").strip()
    if key and secret:
        token = environ.get("AWS_SESSION_TOKEN", "").strip() or None
        return sigv4.Credentials(key, secret, token, origin="environment variables")
    identity = WebIdentity.from_environ(environ, default_session_name=SESSION_NAME)
    if identity is None:
        raise FailedPrecondition(
            "no AWS credentials for SigV4: set forecaster.prometheus.sigv4.credentials_dir to a "
            "Secret mount with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, set those environment "
            "variables, or give the pod a web identity (EKS IRSA: AWS_ROLE_ARN and "
            "AWS_WEB_IDENTITY_TOKEN_FILE)"
        )
    endpoint = config.sts_endpoint or f"https://sts.{config.region}.amazonaws.com"
    return cache.get(
        identity,
        endpoint=endpoint.rstrip("/"),
        duration_s=config.web_identity_duration_s,
        session=session,
        clock=clock,
        timeout_s=timeout_s,
    )


class PrometheusAuth(requests.auth.AuthBase):
    """Sets the configured authentication headers on each request (secrets re-read each time).

    ``environ`` (the AWS variables), ``sts_session``, ``sts_cache`` (web-identity credentials) and
    ``clock`` (the signature's time) are the I/O boundaries; production defaults when omitted.

    Order: bearer or basic ``Authorization``, the tenant header, then the SigV4 signature, which
    covers the final URL, the body and the tenant header.
    """

    def __init__(
        self,
        config: PrometheusSourceConfig,
        *,
        environ: Mapping[str, str] | None = None,
        sts_session: requests.Session | None = None,
        sts_cache: CredentialCache = DEFAULT_CACHE,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._config = config
        self._environ = environ if environ is not None else os.environ
        self._sts_session = sts_session if sts_session is not None else requests.Session()
        self._sts_cache = sts_cache
        self._clock = clock

    @property
    def active(self) -> bool:
        """Whether there is anything to add to a request."""
        c = self._config
        return any(
            v is not None
            for v in (c.bearer_token, c.bearer_token_file, c.basic_auth, c.tenant, c.sigv4)
        )

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        c = self._config
        if c.bearer_token is not None:
            request.headers["Authorization"] = f"Bearer {c.bearer_token.get_secret_value()}"
        elif c.bearer_token_file is not None:
            token = read_secret_file(c.bearer_token_file, "bearer token")
            request.headers["Authorization"] = f"Bearer {token}"
        elif c.basic_auth is not None:
            password = (
                c.basic_auth.password.get_secret_value()
                if c.basic_auth.password is not None
                else read_secret_file(str(c.basic_auth.password_file), "basic auth password")
            )
            pair = f"{c.basic_auth.username}:{password}".encode()
            request.headers["Authorization"] = f"Basic {base64.b64encode(pair).decode('ascii')}"
        signed: dict[str, str] = {}
        if c.tenant is not None:
            tenant = (
                c.tenant.id
                if c.tenant.id is not None
                else read_secret_file(str(c.tenant.id_file), "tenant id")
            )
            request.headers[c.tenant.header] = tenant
            signed[c.tenant.header] = tenant
        if c.sigv4 is not None:
            credentials = load_aws_credentials(
                c.sigv4,
                environ=self._environ,
                session=self._sts_session,
                timeout_s=c.timeout_s,
                cache=self._sts_cache,
                clock=self._clock,
            )
            body = request.body or b""
            if isinstance(body, str):
                body = body.encode("utf-8")
            request.headers.update(
                sigv4.sign_headers(
                    str(request.method),
                    str(request.url),
                    credentials,
                    region=c.sigv4.region,
                    service=c.sigv4.service,
                    now=self._clock(),
                    body=body,
                    headers=signed,
                )
            )
        return request


def configure_session(session: requests.Session, config: PrometheusSourceConfig) -> None:
    """TLS settings on ``session``: the CA bundle to verify with and the client certificate."""
    if config.tls is None:
        return
    if config.tls.ca_file is not None:
        session.verify = config.tls.ca_file
    if config.tls.cert_file is not None and config.tls.key_file is not None:
        session.cert = (config.tls.cert_file, config.tls.key_file)
