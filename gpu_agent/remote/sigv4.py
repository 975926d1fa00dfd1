"""SigV4 for the agent's S3 requests: the signer lives in :mod:`common.aws.sigv4` (shared with the
forecaster's Prometheus source); this module keeps the agent's import path."""

from common.aws.sigv4 import (
    ALGORITHM,
    MAX_EXPIRES_S,
    UNSIGNED_PAYLOAD,
    Credentials,
    canonical_query,
    encode_key,
    presign_url,
    signing_key,
)

__all__ = [
    "ALGORITHM",
    "MAX_EXPIRES_S",
    "UNSIGNED_PAYLOAD",
    "Credentials",
    "canonical_query",
    "encode_key",
    "presign_url",
    "signing_key",
]
