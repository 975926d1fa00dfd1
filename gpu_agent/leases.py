"""Hand-off to inference processes: leases on held models and how to map them without copying.

Owns Attach and Release: the lease table, the tier offered (the fastest held, up to what the
caller can map: a CUDA IPC handle of the GPU allocation, the host tier's shared-memory files, or
the disk files), the tensor table with offsets into whatever is offered, and releasing memory
kept alive only by a lease. An attached model is never a candidate for eviction (the registry
sees its leases). It must not load or evict models.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import NotFound
from common.ids import ModelId
from common.tiers import Tier
from gpu_agent.events import EventBus
from gpu_agent.gpu_tier import GpuTier
from gpu_agent.holdings import GpuResidency, Holdings
from gpu_agent.safetensors_format import SafetensorsLayout
from protos import gpu_agent_pb2 as pb
from protos.tiers import agent_tier


@dataclass(frozen=True, slots=True)
class _Lease:
    model_id: ModelId
    pid: int


class Leases:
    """Leases on the models of ``holdings``."""

    def __init__(
        self,
        holdings: Holdings,
        *,
        gpu: GpuTier,
        events: EventBus,
        monotonic: Callable[[], float],
    ) -> None:
        self._holdings = holdings
        self._gpu = gpu
        self._events = events
        self._mono = monotonic
        self._leases: dict[str, _Lease] = {}

    def attach(self, model_id: ModelId, *, max_tier: Tier, client_pid: int) -> pb.AttachResponse:
        """Open a lease on a held model, offered in the fastest tier up to ``max_tier``.

        GPU tier only when the allocation lives on a CUDA device. :class:`NotFound` if the model
        is not held.
        """
        with self._holdings.lock:
            holding = self._holdings.get(model_id)
            if holding is None:
                raise NotFound(f"model {model_id} is not held by this agent; preload it first")
            lease_id = uuid.uuid4().hex
            response = pb.AttachResponse(model_id=model_id, lease_id=lease_id)
            gpu = holding.gpu
            if max_tier >= Tier.GPU and gpu is not None and gpu.buffer.is_cuda:
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
            holding.last_used = self._mono()
            self._leases[lease_id] = _Lease(model_id, client_pid)
        self._events.publish(
            pb.Event.KIND_ATTACHED, model_id, tier=tier, reason=f"pid {client_pid}"
        )
        return response

    def release(self, lease_id: str) -> None:
        """End a lease; :class:`NotFound` if it does not exist (already released)."""
        with self._holdings.lock:
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                raise NotFound(f"lease {lease_id[:64]!r} does not exist (already released?)")
            holding = self._holdings.get(lease.model_id)
            if holding is not None:
                holding.leases.pop(lease_id, None)
            evicted_while_attached = holding is None or holding.gpu is None
        if evicted_while_attached:
            self._gpu.release_cache()
        self._events.publish(pb.Event.KIND_RELEASED, lease.model_id, reason=f"pid {lease.pid}")


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
