"""Hand-off to inference processes: leases on held models and how to map them without copying.

Owns Attach and Release: the lease table, the tier offered (the fastest held, up to what the
caller can map: a CUDA IPC handle of the GPU allocation, the host tier's shared-memory files, or
the disk files), the tensor table with offsets into whatever is offered, and releasing memory
kept alive only by a lease. An attached model is never a candidate for eviction (the registry
sees its leases). A lease may carry a time to live: its holder (a pod's hold sidecar) renews it,
and :meth:`Leases.expire` ends the ones whose renewals stopped, or whose process exited when the
agent can watch it (:mod:`gpu_agent.processes`), so a crashed pod never pins a model forever: a
lease that could end neither way (no TTL, and a process the agent cannot see) is refused. A
lease belongs to the version it was taken on: when a newer version replaces the model, the lease
keeps the old one (retired, see :mod:`gpu_agent.holdings`) alive until it ends.
It must not load or evict models.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidInput, NotFound
from common.ids import ModelId
from common.tiers import Tier
from gpu_agent.events import EventBus
from gpu_agent.gpu_tier import GpuTier
from gpu_agent.holdings import GpuResidency, Holding, Holdings
from gpu_agent.processes import ProcessRef, ProcessTable
from gpu_agent.safetensors_format import SafetensorsLayout
from protos import gpu_agent_pb2 as pb
from protos.tiers import agent_tier

MAX_LEASE_TTL_S = 86_400.0
"""A day: a TTL is a crash detector, not a reservation."""


@dataclass(slots=True)
class _Lease:
    model_id: ModelId
    holding: Holding
    """The version the lease was taken on (it stays leased after a newer one replaces it)."""
    pid: int
    owner: ProcessRef | None = None
    """The holder's process when the agent can watch it: the lease ends when it exits."""
    ttl_s: float = 0.0
    """0: lives until Release."""
    expires_at: float = float("inf")
    """Monotonic time after which :meth:`Leases.expire` ends it."""


class Leases:
    """Leases on the models of ``holdings``."""

    def __init__(
        self,
        holdings: Holdings,
        *,
        gpu: GpuTier,
        events: EventBus,
        monotonic: Callable[[], float],
        processes: ProcessTable | None = None,
    ) -> None:
        self._holdings = holdings
        self._processes = processes or ProcessTable()
        self._gpu = gpu
        self._events = events
        self._mono = monotonic
        self._leases: dict[str, _Lease] = {}

    def attach(
        self,
        model_id: ModelId,
        *,
        max_tier: Tier,
        client_pid: int,
        client_pid_namespace: str = "",
        ttl_s: float = 0.0,
        lease_only: bool = False,
    ) -> pb.AttachResponse:
        """Open a lease on a held model, offered in the fastest tier up to ``max_tier``.

        GPU tier only when the allocation lives on a CUDA device. ``ttl_s`` > 0: the lease ends
        unless renewed within that many seconds. When ``client_pid`` in ``client_pid_namespace``
        is a process the agent can watch, the lease also ends when it exits. ``lease_only``: no
        tensor table or handle (the caller only pins the model). :class:`InvalidInput` for a TTL
        out of range, a watchable pid that is not running, or a lease that could never end
        without a Release; :class:`NotFound` if the model is not held.
        """
        if not 0 <= ttl_s <= MAX_LEASE_TTL_S or ttl_s != ttl_s:
            raise InvalidInput(f"lease_ttl_s must be between 0 and {MAX_LEASE_TTL_S:.0f}")
        with self._holdings.lock:
            holding = self._holdings.get(model_id)
            if holding is None:
                raise NotFound(f"model {model_id} is not held by this agent; preload it first")
            owner = self._owner(client_pid, client_pid_namespace, ttl_s=ttl_s)
            lease_id = uuid.uuid4().hex
            response = pb.AttachResponse(model_id=model_id, lease_id=lease_id)
            gpu = holding.gpu
            if lease_only:
                tier = min(holding.tier, max_tier)
            elif max_tier >= Tier.GPU and gpu is not None and gpu.buffer.is_cuda:
                tier = Tier.GPU
                response.cuda.CopyFrom(_ipc_handle(gpu))
                layouts = [p.layout for p in gpu.placements]
                shifts = [p.base - p.layout.data_start for p in gpu.placements]
                _add_tensors(response, layouts, shifts=shifts)
            else:
                files = holding.disk_files
                tier = Tier.DISK
                if max_tier >= Tier.HOST and holding.host_files is not None:
                    files = holding.host_files
                    tier = Tier.HOST
                for path in files:
                    response.files.append(
                        pb.HostFile(path=str(path), size_bytes=path.stat().st_size)
                    )
                _add_tensors(response, holding.layouts, shifts=[0] * len(holding.layouts))
            response.tier = agent_tier(tier)
            holding.leases[lease_id] = client_pid
            now = self._mono()
            holding.last_used = now
            expires = now + ttl_s if ttl_s > 0 else float("inf")
            self._leases[lease_id] = _Lease(model_id, holding, client_pid, owner, ttl_s, expires)
        self._events.publish(
            pb.Event.KIND_ATTACHED, model_id, tier=tier, reason=f"pid {client_pid}"
        )
        return response

    def _owner(self, pid: int, namespace: str, *, ttl_s: float) -> ProcessRef | None:
        if self._processes.watchable(pid, namespace):
            owner = self._processes.find(pid)
            if owner is None:
                raise InvalidInput(f"client_pid {pid} is not a running process on this node")
            return owner
        if ttl_s == 0:
            raise InvalidInput(
                "a lease without lease_ttl_s must come from a process the agent can watch "
                f"(client_pid {pid} in PID namespace {namespace[:64] or 'unset'!r}; the agent's "
                f"is {self._processes.namespace or 'unknown'!r}): set lease_ttl_s and renew it "
                "(`prewarm handoff hold` does), or share the agent's PID namespace"
            )
        return None

    def release(self, lease_id: str, *, reason: str = "") -> ModelId:
        """End a lease; the model it was on. :class:`NotFound` if it does not exist (already
        released or expired)."""
        with self._holdings.lock:
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                raise NotFound(
                    f"lease {lease_id[:64]!r} does not exist (already released, or expired)"
                )
            lease.holding.leases.pop(lease_id, None)
            evicted_while_attached = lease.holding.gpu is None
        if evicted_while_attached:
            self._gpu.release_cache()
        self._events.publish(
            pb.Event.KIND_RELEASED, lease.model_id, reason=reason or f"pid {lease.pid}"
        )
        return lease.model_id

    def renew(self, lease_id: str) -> float:
        """Extend a lease by its TTL; the TTL (0: the lease has none and needs no renewal).
        :class:`NotFound` when it has ended: the holder attaches again."""
        with self._holdings.lock:
            lease = self._leases.get(lease_id)
            if lease is None:
                raise NotFound(
                    f"lease {lease_id[:64]!r} does not exist (released, or expired because it "
                    "was not renewed in time): attach again"
                )
            now = self._mono()
            if lease.ttl_s > 0:
                lease.expires_at = now + lease.ttl_s
            lease.holding.last_used = now
            return lease.ttl_s

    def expire(self) -> list[str]:
        """End every lease whose TTL passed without a renewal or whose process exited; their
        ids."""
        now = self._mono()
        with self._holdings.lock:
            leases = list(self._leases.items())
        stale: list[tuple[str, str]] = []
        for lease_id, lease in leases:
            if lease.expires_at <= now:
                why = f"lease expired (not renewed for {lease.ttl_s:g} s)"
            elif lease.owner is not None and not self._processes.alive(lease.owner):
                why = "its process exited"
            else:
                continue
            stale.append((lease_id, f"pid {lease.pid}: {why}"))
        for lease_id, reason in stale:
            # A Release racing this one may have ended it already: that is the same outcome.
            with contextlib.suppress(NotFound):
                self.release(lease_id, reason=reason)
        return [lease_id for lease_id, _ in stale]

    def next_expiry(self) -> float | None:
        """The monotonic time of the earliest lease expiry, or ``None`` without TTL leases."""
        with self._holdings.lock:
            times = [lease.expires_at for lease in self._leases.values() if lease.ttl_s > 0]
        return min(times) if times else None


def _add_tensors(
    response: pb.AttachResponse,
    layouts: Sequence[SafetensorsLayout],
    *,
    shifts: Sequence[int],
) -> None:
    # For files, offsets are absolute file offsets (data_start + begin); for the GPU
    # allocation they are base + begin, i.e. (data_start + begin) + (base - data_start).
    for index, (layout, shift) in enumerate(zip(layouts, shifts, strict=True)):
        for entry in layout.tensors:
            response.tensors.append(
                pb.TensorInfo(
                    name=entry.name,
                    dtype=entry.dtype,
                    shape=list(entry.shape),
                    offset_bytes=layout.data_start + entry.begin + shift,
                    nbytes=entry.nbytes,
                    file_index=index,
                )
            )


def _ipc_handle(gpu: GpuResidency) -> pb.CudaIpcHandle:
    # _share_cuda_ returns (device, handle, size, offset, ref_counter_handle, ref_counter_offset,
    # event_handle, event_sync_required): exactly what UntypedStorage._new_shared_cuda takes in
    # the importing process. torch keeps the block alive in the exporter until every importer's
    # reference counter drops, so an evicted-but-attached model stays valid for its users.
    storage = gpu.buffer.untyped_storage()
    shared: tuple[Any, ...] = storage._share_cuda_()  # type: ignore[no-untyped-call]
    device, handle, size, offset, ref_handle, ref_offset, event_handle, event_sync = shared
    return pb.CudaIpcHandle(
        device_index=int(device),
        gpu_uuid=gpu.gpu_uuid,
        handle=bytes(handle),
        storage_size_bytes=int(size),
        storage_offset_bytes=int(offset),
        ref_counter_handle=bytes(ref_handle),
        ref_counter_offset=int(ref_offset),
        event_handle=bytes(event_handle) if event_handle else b"",
        event_sync_required=bool(event_sync),
    )
