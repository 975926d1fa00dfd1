"""The error taxonomy every package raises, so callers can act on the kind of failure.

Each class says what the caller should do. The mapping of these kinds to gRPC status codes lives in
exactly one place, :mod:`common.grpc_status`; the CLI maps them to exit codes in ``prewarm.cli``.

- :class:`InvalidInput`: the input is wrong; fix it and retry. (INVALID_ARGUMENT, CLI exit 2)
- :class:`NotFound`: the named thing does not exist. (NOT_FOUND)
- :class:`PermissionDenied`: not allowed (auth, a URI outside allowed roots). (PERMISSION_DENIED)
- :class:`Unauthenticated`: no valid credential presented. (UNAUTHENTICATED)
- :class:`ResourceExhausted`: not enough memory, budget or quota now. (RESOURCE_EXHAUSTED)
- :class:`DataLoss`: data is corrupt (checksum mismatch, truncated file). (DATA_LOSS)
- :class:`DeadlineExceeded`: the work did not finish in time. (DEADLINE_EXCEEDED)
- :class:`TemporaryError`: a dependency is down or slow; retrying later may succeed. (UNAVAILABLE)
- :class:`FailedPrecondition`: the system is not in a state that allows this (not leader,
  paused). (FAILED_PRECONDITION)
"""

from __future__ import annotations


class PrewarmError(Exception):
    """Base of every error prewarm raises on purpose; ``str(err)`` is a message to act on."""


class InvalidInput(PrewarmError, ValueError):
    """The caller's input is malformed or out of range. Fix the input; retrying as-is will fail."""


class NotFound(PrewarmError, LookupError):
    """The named model, request, node or file does not exist."""


class PermissionDenied(PrewarmError):
    """The caller may not do this (missing or wrong token, URI outside the allowed roots)."""


class Unauthenticated(PermissionDenied):
    """No valid credential was presented (missing or unknown token, no client certificate)."""


class ResourceExhausted(PrewarmError):
    """Not enough memory, budget or quota to do this now."""


class DataLoss(PrewarmError):
    """Data was corrupt or incomplete (checksum mismatch, truncated weights)."""


class DeadlineExceeded(PrewarmError, TimeoutError):
    """The work did not finish before its deadline."""


class TemporaryError(PrewarmError):
    """A dependency is down, slow or overloaded. Retrying later, with backoff, may succeed."""


class FailedPrecondition(PrewarmError):
    """The system is not in a state that allows this (e.g. this replica is not the leader)."""
