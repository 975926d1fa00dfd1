"""The library an inference process uses to take over weights the agent pre-loaded.

Owns :func:`attach`: ask the node's agent for a lease on a model and map its tensors without
copying them: CUDA IPC for the GPU tier, a shared-memory mmap for the host tier, and a normal
safetensors load as the fallback (disk tier, agent unreachable, or mapping impossible). Also
:func:`load_compile_artifacts` for the torch.compile warm start. It must not import the agent's
server side or hold state beyond the returned :class:`AttachedModel`.

What a pod needs for each tier:

- GPU tier (CUDA IPC): the same node and the same physical GPU as the agent (the device plugin
  must hand the pod that GPU; CUDA_VISIBLE_DEVICES may number it differently, so the GPU is matched
  by UUID), and IPC with the agent's process: ``hostIPC: true`` or a shared IPC/PID namespace
  (same pod, ``shareProcessNamespace``), since cudaIpcOpenMemHandle needs to reach the exporting
  process. The tensors are read-write views of the agent's allocation: treat them as read-only.
- Host tier: the agent's ``shm_dir`` mounted into the pod (hostPath or an emptyDir medium Memory
  shared by both containers). Pages are mapped copy-on-write: writes stay private to the pod.
- Disk tier / fallback: the cache directory (or the model's own files) readable by the pod.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import safetensors.torch
import torch

from common.errors import NotFound, PrewarmError, TemporaryError
from common.grpc_status import error_for
from common.tiers import Tier
from gpu_agent.copy_engine import TORCH_DTYPES
from gpu_agent.processes import own_pid_namespace
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from protos.tiers import agent_tier, tier_from_proto

DEFAULT_TARGET = "127.0.0.1:50061"
DEFAULT_LEASE_TTL_S = 60.0
"""The lease's time to live; :class:`AttachedModel` renews it every third of that."""


@dataclass
class AttachedModel:
    """A model's tensors, valid until :meth:`release` (or the end of a ``with`` block).

    ``tier`` says how they were obtained: ``"gpu"`` (CUDA IPC), ``"host"`` (mmap), ``"disk"`` or
    ``"fallback"`` (normal load, tensors are copies).
    """

    model_id: str
    tier: str
    tensors: dict[str, torch.Tensor]
    lease_id: str = ""
    _stub: Any = field(default=None, repr=False)
    _metadata: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    _keep: list[Any] = field(default_factory=list, repr=False)
    _channel: grpc.Channel | None = field(default=None, repr=False)
    _renewing: threading.Event = field(default_factory=threading.Event, repr=False)

    def keep_renewed(self, every_s: float) -> None:
        """Renew the lease every ``every_s`` seconds from a daemon thread until :meth:`release`
        (or until the agent says it has ended: the tensors stay valid, but the model becomes
        evictable)."""
        stop = self._renewing

        def renew() -> None:
            while not stop.wait(every_s):
                lease, stub = self.lease_id, self._stub
                if not lease or stub is None:
                    return
                try:
                    stub.RenewLease(
                        pb.RenewLeaseRequest(lease_id=lease), metadata=self._metadata, timeout=5
                    )
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        return
                except ValueError:  # the channel was closed by release()
                    return

        threading.Thread(target=renew, name=f"lease-{self.model_id}", daemon=True).start()

    def release(self) -> None:
        """Drop the tensors, end the lease and close the channel (idempotent).

        Raises the agent's error (mapped by :mod:`common.grpc_status`) if ending the lease fails.
        """
        self._renewing.set()
        self.tensors = {}
        self._keep.clear()
        try:
            if self.lease_id and self._stub is not None:
                lease, self.lease_id = self.lease_id, ""
                _end_lease(self._stub, lease, metadata=self._metadata)
        finally:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def __enter__(self) -> AttachedModel:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def attach(
    model_id: str,
    target: str = DEFAULT_TARGET,
    *,
    token: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    max_tier: Tier = Tier.GPU,
    fallback_files: Sequence[Path] = (),
    fallback_device: str = "cpu",
    timeout_s: float = 10.0,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> AttachedModel:
    """Attach to ``model_id`` held by the agent at ``target``; see the module docstring.

    Tries the fastest tier the agent holds (up to ``max_tier``); if mapping it fails here (other
    node or GPU, no shared IPC namespace, shm not mounted) it asks again one tier lower. If the
    agent does not hold the model or cannot be reached, ``fallback_files`` (safetensors) are
    loaded normally onto ``fallback_device``; without them the agent's error is raised
    (:class:`NotFound`, :class:`TemporaryError`, ...).

    The lease lives ``lease_ttl_s`` seconds without a renewal; the returned model renews it
    until released, so a process that dies stops pinning the model. ``lease_ttl_s=0`` asks for a
    lease bound to this process instead, which only an agent in the same PID namespace grants.
    """
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    stub = pb_grpc.GpuAgentStub(channel)
    tier = max_tier
    try:
        while tier >= Tier.DISK:
            try:
                response = stub.Attach(
                    pb.AttachRequest(
                        model_id=model_id,
                        max_tier=agent_tier(tier),
                        client_pid=os.getpid(),
                        client_pid_namespace=own_pid_namespace(),
                        lease_ttl_s=lease_ttl_s,
                    ),
                    metadata=metadata,
                    timeout=timeout_s,
                )
            except grpc.RpcError as error:
                raise error_for(error.code(), error.details() or "") from error
            attached = AttachedModel(
                model_id,
                "",
                {},
                lease_id=response.lease_id,
                _stub=stub,
                _metadata=metadata,
                _channel=channel,
            )
            try:
                _map(response, attached)
                if lease_ttl_s > 0:
                    attached.keep_renewed(lease_ttl_s / 3)
                return attached
            except (OSError, RuntimeError):
                # Not mappable from here (different node/GPU, no IPC namespace, no shm mount):
                # give the lease back and ask for the next slower tier.
                _end_lease(stub, response.lease_id, metadata=metadata)
                offered = tier_from_proto(response.tier) or Tier.DISK
                tier = Tier(min(tier, offered) - 1)
        raise NotFound(f"model {model_id}: no tier of the agent's copy is reachable from here")
    except (NotFound, TemporaryError):
        channel.close()
        if not fallback_files:
            raise
        return _load_fallback(model_id, fallback_files, device=fallback_device)
    except BaseException:
        channel.close()
        raise


def _end_lease(stub: Any, lease_id: str, *, metadata: tuple[tuple[str, str], ...]) -> None:
    try:
        stub.Release(pb.ReleaseRequest(lease_id=lease_id), metadata=metadata)
    except grpc.RpcError as error:
        raise error_for(error.code(), error.details() or "") from error


def _map(response: pb.AttachResponse, attached: AttachedModel) -> None:
    tier = tier_from_proto(response.tier)
    if tier == Tier.GPU:
        base = _open_cuda_ipc(response.cuda)
        attached.tier = "gpu"
        attached._keep.append(base)
        attached.tensors = {t.name: _view(base, t, offset=t.offset_bytes) for t in response.tensors}
        return
    if tier == Tier.HOST:
        bases = []
        for file in response.files:
            with open(file.path, "rb") as handle:
                # ACCESS_COPY: a private copy-on-write mapping; the pages are the agent's shared
                # memory until the pod writes to one, and torch.frombuffer needs a writable buffer.
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            attached._keep.append(mapped)
            bases.append(torch.frombuffer(mapped, dtype=torch.uint8))
        attached.tier = "host"
        attached.tensors = {
            t.name: _view(bases[t.file_index], t, offset=t.offset_bytes) for t in response.tensors
        }
        return
    files = [Path(f.path) for f in response.files]
    loaded: dict[str, torch.Tensor] = {}
    for path in files:
        loaded.update(safetensors.torch.load_file(str(path)))
    attached.tier = "disk"
    attached.tensors = loaded


def _view(base: torch.Tensor, info: pb.TensorInfo, *, offset: int) -> torch.Tensor:
    flat = base[offset : offset + info.nbytes]
    return flat.view(TORCH_DTYPES[info.dtype]).view(tuple(info.shape))


def _cuda_index(handle: pb.CudaIpcHandle) -> int:
    # The pod's CUDA numbering (after CUDA_VISIBLE_DEVICES) need not match the agent's: use UUID.
    wanted = handle.gpu_uuid.removeprefix("GPU-")
    for index in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(index).uuid) == wanted:
            return index
    raise RuntimeError(f"GPU {handle.gpu_uuid} is not visible in this process")


def _open_cuda_ipc(handle: pb.CudaIpcHandle) -> torch.Tensor:
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available in this process")
    index = _cuda_index(handle)
    torch.cuda._lazy_init()  # type: ignore[no-untyped-call]
    storage = torch.UntypedStorage._new_shared_cuda(
        index,
        handle.handle,
        handle.storage_size_bytes,
        handle.storage_offset_bytes,
        handle.ref_counter_handle,
        handle.ref_counter_offset,
        handle.event_handle or None,
        handle.event_sync_required,
    )
    base = torch.empty(0, dtype=torch.uint8, device=torch.device("cuda", index))
    base.set_(storage, 0, (handle.storage_size_bytes,), (1,))
    return base


def _load_fallback(model_id: str, files: Sequence[Path], *, device: str) -> AttachedModel:
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        tensors.update(safetensors.torch.load_file(str(path), device=device))
    return AttachedModel(model_id, "fallback", tensors)


def load_compile_artifacts(path: Path) -> bool:
    """Feed an installed mega-cache to ``torch.compiler.load_cache_artifacts``.

    Call before the first ``torch.compile`` so it warm-starts. Returns ``False`` when the file is
    not there (nothing pre-staged; compile runs cold).
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise PrewarmError(f"cannot read compile artifacts {path}: {error}") from error
    torch.compiler.load_cache_artifacts(blob)
    return True
