"""The GPU tier: choosing a GPU, allocating a model's one block on it, filling it, releasing memory.

Owns the NVML readings the agent acts on, the mapping from an NVML GPU to a torch device, the
allocation lock (so two preloads never admit against the same free memory), the staging pool of
the copy engine and the return of freed blocks to the driver. It must not decide which model to
evict (:mod:`gpu_agent.reclaim` does) or touch the registry of holdings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import torch

from common.errors import FailedPrecondition, NotFound, ResourceExhausted
from gpu_agent.control import LoadControl
from gpu_agent.copy_engine import PinnedMapping, Placement, StagingPool, fill, fill_registered
from gpu_agent.nvml import GpuMemory, Nvml

GpuDevice = Callable[[GpuMemory], torch.device]


def default_gpu_device(gpu: GpuMemory) -> torch.device:
    """The torch device of an NVML GPU, matched by UUID.

    NVML numbers GPUs by PCI bus id, CUDA by default "fastest first" and after
    CUDA_VISIBLE_DEVICES; the indices differ on mixed nodes, so only the UUID is trusted.
    """
    wanted = gpu.uuid.removeprefix("GPU-").removeprefix("MIG-")
    for index in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(index).uuid) == wanted:
            return torch.device("cuda", index)
    raise FailedPrecondition(
        f"GPU {gpu.uuid} is not visible to this process (check CUDA_VISIBLE_DEVICES)"
    )


class GpuTier:
    """The node's GPUs as NVML reports them, keeping ``headroom_bytes`` free on each."""

    def __init__(
        self,
        nvml: Nvml,
        *,
        gpu_device: GpuDevice,
        headroom_bytes: int,
        host_fill: str,
        chunk_bytes: int,
        copy_workers: int,
    ) -> None:
        self._nvml = nvml
        self._gpu_device = gpu_device
        self.headroom_bytes = headroom_bytes
        self._host_fill = host_fill
        self._pool = StagingPool(chunk_bytes, workers=copy_workers)
        self.alloc_lock = threading.Lock()
        """Held from choosing a GPU until its allocation exists (admission reads free memory)."""

    def unavailable_reason(self) -> str | None:
        """Why GPU tiers are not served here, or ``None`` when they are."""
        return self._nvml.unavailable_reason()

    def gpus(self) -> list[GpuMemory]:
        return self._nvml.gpus()

    def free_for_models(self, gpu: GpuMemory) -> int:
        """Bytes a model may take on ``gpu`` now (negative below the headroom)."""
        return gpu.free_bytes - self.headroom_bytes

    def check_fits(self, nbytes: int) -> None:
        """:class:`ResourceExhausted` when no GPU here could ever hold ``nbytes``."""
        largest = max((g.total_bytes for g in self._nvml.gpus()), default=0)
        if nbytes > largest - self.headroom_bytes:
            raise ResourceExhausted(
                f"model needs {nbytes} bytes of GPU memory; the largest GPU here holds "
                f"{largest} minus {self.headroom_bytes} headroom"
            )

    def choose(self, wanted_uuid: str, *, skip: Collection[str] = ()) -> GpuMemory:
        """The GPU asked for, else the one with most free memory that is not in ``skip`` (GPUs
        yielded to starting replicas); :class:`FailedPrecondition` when every GPU is skipped."""
        gpus = self._nvml.gpus()
        if wanted_uuid:
            for gpu in gpus:
                if gpu.uuid == wanted_uuid:
                    return gpu
            raise NotFound(f"no GPU with uuid {wanted_uuid} on this node")
        if not gpus:
            raise ResourceExhausted("NVML reports no GPU on this node")
        open_gpus = [g for g in gpus if g.uuid not in skip]
        if not open_gpus:
            raise FailedPrecondition(
                "every GPU on this node is yielded to a starting replica (YieldGpu); preload to "
                "the host tier, onto another node, or after the hold (Status: yielded_until)"
            )
        return max(open_gpus, key=lambda g: g.free_bytes)

    def device(self, gpu: GpuMemory) -> torch.device:
        return self._gpu_device(gpu)

    @staticmethod
    def allocate(device: torch.device, nbytes: int, *, gpu_uuid: str) -> torch.Tensor:
        """One block of ``nbytes``; :class:`ResourceExhausted` when the driver refuses it."""
        try:
            # One allocation per model: the tensors are views into it, so eviction returns
            # one contiguous block and fragmentation stays bounded.
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
        except torch.OutOfMemoryError as error:
            raise ResourceExhausted(f"GPU {gpu_uuid} refused {nbytes} bytes: {error}") from error

    def fill(
        self,
        buffer: torch.Tensor,
        placements: Sequence[Placement],
        *,
        control: LoadControl,
        progress: Callable[[int], None],
        pinned: dict[Path, PinnedMapping],
        from_host: bool,
    ) -> None:
        """Copy the placements' file bytes into ``buffer``.

        DMA straight from page-locked host-tier files when they are (``host_fill=registered``),
        else through the pinned staging buffers.
        """
        if pinned and from_host and buffer.is_cuda and self._host_fill == "registered":
            fill_registered(buffer, placements, pool=self._pool, control=control,
                            progress=progress, mappings=pinned)  # fmt: skip
        else:
            fill(buffer, placements, pool=self._pool, control=control, progress=progress)

    @staticmethod
    def release_cache() -> None:
        """Hand freed blocks back to the driver, so NVML and other processes see them free."""
        # torch's caching allocator keeps freed blocks reserved; without empty_cache() NVML (and
        # so every other process) still sees the memory as used. Blocks shared over CUDA IPC are
        # only released once every importing process has dropped them.
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            # Blocks a released lease no longer references sit in torch's IPC "limbo" until
            # collected; collect them first so empty_cache can return them too.
            torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]
            torch.cuda.empty_cache()
