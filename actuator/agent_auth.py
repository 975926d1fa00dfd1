"""The bearer token the daemon presents to GPU agents (``actuator.agent.token`` or ``token_file``).

Owns reading the token: from the settings, or from its file at every call (a Kubernetes Secret
mount, so a rotated Secret takes effect without a restart). Must not log the token.
"""

from __future__ import annotations

from pathlib import Path

from actuator.config import AgentClientConfig
from common.errors import FailedPrecondition


def agent_metadata(config: AgentClientConfig) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the agents' bearer token; empty when none is configured.

    Raises :class:`FailedPrecondition` when ``token_file`` cannot be read or is empty (the call
    fails with that reason; the next call reads the file again).
    """
    if config.token is not None:
        token = config.token.get_secret_value().strip()
    elif config.token_file is not None:
        try:
            token = Path(config.token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise FailedPrecondition(
                f"cannot read the agents' token file {config.token_file}: {error.strerror or error}"
            ) from error
        if not token:
            raise FailedPrecondition(f"the agents' token file {config.token_file} is empty")
    else:
        return ()
    return (("authorization", f"Bearer {token}"),)
