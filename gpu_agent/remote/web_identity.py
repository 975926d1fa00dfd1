"""Web identity (EKS IRSA) credentials for the agent's S3 requests: the exchange lives in
:mod:`common.aws.web_identity` (shared with the forecaster); this module keeps the agent's import
path."""

from common.aws.web_identity import (
    DEFAULT_CACHE,
    DEFAULT_SESSION_NAME,
    REFRESH_BEFORE,
    ROLE_ARN,
    SESSION_NAME,
    TOKEN_FILE,
    CredentialCache,
    WebIdentity,
    assume_role_with_web_identity,
)

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_SESSION_NAME",
    "REFRESH_BEFORE",
    "ROLE_ARN",
    "SESSION_NAME",
    "TOKEN_FILE",
    "CredentialCache",
    "WebIdentity",
    "assume_role_with_web_identity",
]
