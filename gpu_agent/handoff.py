"""The pod side of the engine hand-off: wait for a model's directory, then hold it while serving.

Owns the two things a serving pod does with its node's agent, with no engine code: an init
container waits until the agent holds the model's directory in the host tier (Status, polled) and
learns its path, or gives up after a timeout so the engine falls back to its own download; a
native sidecar holds a lease on the model (Attach with ``lease_only`` and a TTL, RenewLease every
few seconds, Release on SIGTERM), so eviction never pulls the directory from under the running
engine and a crashed pod's lease simply expires. Before the engine starts, the init container also
asks the agent to yield the GPU memory it holds (YieldGpu), because engines size their memory
pools from what is free at start-up and refuse to start while another process holds it.
``prewarm handoff`` (prewarm/cli/handoff_cmd.py)
is the command line over this module.

Must not import torch or the agent's server side: it runs in the small daemon image. Errors a
retry cannot fix (wrong token, bad request) are raised as :mod:`common.errors` kinds; an
unreachable agent is waited for.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from common.errors import InvalidInput, NotFound, PermissionDenied, PrewarmError
from common.grpc_status import error_for
from gpu_agent.processes import own_pid_namespace
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc

DEFAULT_AGENT = "127.0.0.1:50061"
AGENT_ENV = "PREWARM_AGENT_ADDRESS"
TOKEN_ENV = "PREWARM_AGENT_TOKEN"
_FATAL = (InvalidInput, PermissionDenied)
"""Refusals that waiting cannot change (PermissionDenied covers Unauthenticated)."""

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class WaitResult:
    """What waiting found: the revision directory (``None``: fall back) and why not, if not."""

    model_dir: str | None
    current_dir: str = ""
    revision: str = ""
    reason: str = ""


def _metadata(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _raise_if_fatal(error: grpc.RpcError) -> PrewarmError:
    """The error kind of a failed call; raised at once when retrying cannot help."""
    kind = error_for(error.code(), error.details() or "")
    if isinstance(kind, _FATAL):
        raise kind from error
    return kind


class AgentChannel:
    """One channel to the node's agent (``target``), with the bearer token if there is one."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self.stub: Any = pb_grpc.GpuAgentStub(self._channel)
        self.metadata = _metadata(token)
        self.target = target

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AgentChannel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def wait_for_directory(
    agent: AgentChannel,
    model_id: str,
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    visible: Callable[[str], bool] = os.path.isdir,
) -> WaitResult:
    """Poll the agent's Status until it holds ``model_id``'s directory or ``timeout_s`` passes.

    Returns the directory when it is held and ``visible`` here (the pod mounts the agent's
    ``shm_dir`` at the same path); otherwise a result without one and the reason (not held in
    time, agent unreachable, path not mounted), which the caller reports before the engine falls
    back to its own download. Raises :class:`PermissionDenied` / :class:`Unauthenticated` /
    :class:`InvalidInput` at once: waiting would not change them.
    """
    if not model_id:
        raise InvalidInput("--model is empty: give the model id the catalog and agent use")
    if timeout_s < 0 or poll_s <= 0:
        raise InvalidInput("the timeout must be >= 0 and the poll interval > 0")
    deadline = monotonic() + timeout_s
    reason = "not held by the agent"
    while True:
        remaining = deadline - monotonic()
        try:
            status = agent.stub.Status(
                pb.StatusRequest(), metadata=agent.metadata, timeout=max(min(remaining, 10), 1)
            )
        except grpc.RpcError as error:
            kind = _raise_if_fatal(error)
            reason = f"agent at {agent.target} unreachable ({type(kind).__name__}: {kind})"
        else:
            held = next((m for m in status.models if m.model_id == model_id), None)
            if held is not None and held.model_dir:
                if not visible(held.model_dir):
                    return WaitResult(
                        None,
                        reason=(
                            f"the agent holds it at {held.model_dir}, which this pod does not "
                            "see: mount the agent's shm_dir (hostPath) at the same path"
                        ),
                    )
                return WaitResult(held.model_dir, held.current_dir, held.revision)
            reason = (
                "held, but not as a directory in host memory yet"
                if held is not None
                else "not held by the agent"
            )
        if monotonic() >= deadline:
            return WaitResult(None, reason=f"{reason} after {timeout_s:g} s")
        sleep(min(poll_s, max(deadline - monotonic(), 0.0)))


@dataclass(frozen=True, slots=True)
class YieldResult:
    """What a YieldGpu did: the GPUs yielded (none on a GPU-less node), the wall-clock end of
    the hold, the bytes freed, and the models moved down to host memory (or kept on disk);
    ``error`` when the agent could not be asked (the engine starts anyway)."""

    gpu_uuids: tuple[str, ...] = ()
    until_unix_s: float = 0.0
    freed_bytes: int = 0
    demoted: tuple[str, ...] = ()
    on_disk: tuple[str, ...] = ()
    error: str = ""


def yield_gpu(
    agent: AgentChannel,
    *,
    reason: str,
    gpu_uuids: tuple[str, ...] = (),
    hold_s: float = 0.0,
    timeout_s: float = 60.0,
) -> YieldResult:
    """Ask the agent to free the GPU memory it holds on ``gpu_uuids`` (empty: every GPU of the
    node) and keep off them for ``hold_s`` (0: its default), before the engine starts.

    An agent that cannot be reached is reported in ``error``, not raised: the engine may still
    start (the agent also gives memory back under pressure). A refusal (bad token or request, an
    unknown GPU) is raised: it is a configuration error that retrying will not fix.
    """
    if hold_s < 0:
        raise InvalidInput("the yield hold must be >= 0 (0: the agent's default)")
    request = pb.YieldGpuRequest(gpu_uuids=list(gpu_uuids), reason=reason, hold_s=hold_s)
    try:
        response = agent.stub.YieldGpu(request, metadata=agent.metadata, timeout=timeout_s)
    except grpc.RpcError as error:
        kind = error_for(error.code(), error.details() or "")
        if isinstance(kind, (*_FATAL, NotFound)):
            raise kind from error
        return YieldResult(error=f"agent at {agent.target}: {type(kind).__name__}: {kind}")
    until = response.yielded_until.ToNanoseconds() / 1e9 if response.gpu_uuids else 0.0
    return YieldResult(
        gpu_uuids=tuple(response.gpu_uuids),
        until_unix_s=until,
        freed_bytes=response.gpu_bytes_freed,
        demoted=tuple(response.demoted_model_ids),
        on_disk=tuple(response.kept_on_disk_model_ids),
    )


class Holder:
    """Holds a TTL lease on ``model_id`` until :meth:`stop`: attach, renew, release.

    ``log`` gets one line per change (attached, not held, lease lost, released). The model not
    being held when the holder starts is no error: the engine then loaded from its source and
    there is nothing to hold, so the holder idles until it is stopped (a native sidecar that
    exited would be restarted by the kubelet). A lease lost later (expired while the agent was
    unreachable, or the agent restarted) is taken again once the model is held again.
    """

    def __init__(
        self,
        agent: AgentChannel,
        model_id: str,
        *,
        ttl_s: float,
        renew_s: float,
        log: Callable[[str], None],
    ) -> None:
        if not model_id:
            raise InvalidInput("--model is empty: give the model id the catalog and agent use")
        if not 0 < renew_s < ttl_s:
            raise InvalidInput(
                f"renew every {renew_s:g} s with a TTL of {ttl_s:g} s: renewals must come more "
                "often than the TTL (e.g. a TTL of 30s, renewed every 10s)"
            )
        self._agent = agent
        self._model = model_id
        self._ttl_s = ttl_s
        self._renew_s = renew_s
        self._log = log
        self._stop = threading.Event()
        self.lease_id = ""

    def stop(self) -> None:
        """Ask :meth:`run` to release the lease and return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Hold the lease until :meth:`stop`; release it then."""
        ever_held = False
        try:
            while not self._stop.is_set():
                if not self.lease_id:
                    ever_held = self._attach(first=not ever_held) or ever_held
                else:
                    self._renew()
                self._stop.wait(self._renew_s)
        finally:
            self._release()

    def _attach(self, *, first: bool) -> bool:
        request = pb.AttachRequest(
            model_id=self._model,
            max_tier=pb.TIER_HOST,
            client_pid=os.getpid(),
            client_pid_namespace=own_pid_namespace(),
            lease_ttl_s=self._ttl_s,
            lease_only=True,
        )
        try:
            response = self._agent.stub.Attach(
                request, metadata=self._agent.metadata, timeout=self._renew_s
            )
        except grpc.RpcError as error:
            kind = _raise_if_fatal(error)
            if isinstance(kind, NotFound):
                if first:
                    self._log(
                        f"model {self._model} is not held by the agent: nothing to hold (the "
                        "engine loads from its own source)"
                    )
                    self._stop.wait()  # idle until SIGTERM
                return False
            self._log(f"agent at {self._agent.target} unreachable ({kind}); retrying")
            return False
        self.lease_id = response.lease_id
        self._log(f"holding {self._model} (lease {self.lease_id[:8]}, TTL {self._ttl_s:g} s)")
        return True

    def _renew(self) -> None:
        try:
            self._agent.stub.RenewLease(
                pb.RenewLeaseRequest(lease_id=self.lease_id),
                metadata=self._agent.metadata,
                timeout=self._renew_s,
            )
        except grpc.RpcError as error:
            kind = _raise_if_fatal(error)
            if isinstance(kind, NotFound):
                self._log(f"lease on {self._model} ended ({kind}); attaching again")
                self.lease_id = ""
            else:
                self._log(f"agent at {self._agent.target} unreachable ({kind}); retrying")

    def _release(self) -> None:
        if not self.lease_id:
            return
        lease, self.lease_id = self.lease_id, ""
        try:
            self._agent.stub.Release(
                pb.ReleaseRequest(lease_id=lease), metadata=self._agent.metadata, timeout=5
            )
            self._log(f"released {self._model}")
        except grpc.RpcError as error:
            # The lease expires by itself after its TTL; nothing else to do on the way out.
            self._log(f"release of {self._model} failed ({error.code().name}); it expires")
