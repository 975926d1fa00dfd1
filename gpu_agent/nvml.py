"""GPU memory readings from NVML (nvidia-ml-py), behind a small interface the agent is built with.

Owns the translation of NVML's answers into :class:`GpuMemory` readings and the decision that a
node has no usable GPU. It must not allocate GPU memory or decide evictions. NVML is an I/O
boundary: the agent takes an :class:`Nvml` in its constructor; production uses
:class:`PynvmlNvml`, CPU tests pass a fake.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """One GPU's memory as NVML reports it now.

    ``other_processes_bytes`` is what processes other than this agent use, or ``None`` when NVML
    cannot tell (see :class:`PynvmlNvml`).
    """

    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    other_processes_bytes: int | None


class Nvml(Protocol):
    """What the agent needs from NVML."""

    def unavailable_reason(self) -> str | None:
        """``None`` when GPUs can be read; otherwise why not (the agent then serves host tiers)."""

    def gpus(self) -> list[GpuMemory]:
        """Current readings of every GPU; empty when unavailable."""


class PynvmlNvml:
    """:class:`Nvml` backed by ``pynvml`` (the nvidia-ml-py package).

    ``own_pid`` is this process's pid as NVML sees it. NVML reports host-namespace pids: inside a
    container without ``hostPID`` our pid does not appear in its process list, so our own usage
    shows up as "other" there. The agent therefore also subtracts its own accounted bytes
    (``GpuMemory.used_bytes - ours``) and uses the smaller of the two estimates.
    """

    def __init__(self, own_pid: int | None = None, *, library: Any = None) -> None:
        self._own_pid = own_pid if own_pid is not None else os.getpid()
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._nvml: Any = library
        if library is None:
            try:
                import pynvml
            except ImportError as error:  # pragma: no cover - nvidia-ml-py is a dependency
                self._reason = f"nvidia-ml-py is not installed: {error}"
                return
            library = self._nvml = pynvml
        try:
            library.nvmlInit()
        except library.NVMLError as error:
            # On a node without a driver (or a pod without the device plugin's mounts) nvmlInit
            # fails with LIBRARY_NOT_FOUND / DRIVER_NOT_LOADED; that is a normal CPU node.
            self._reason = f"NVML unavailable: {error}"
            return
        try:
            if library.nvmlDeviceGetCount() == 0:
                self._reason = "NVML reports no GPUs on this node"
        except library.NVMLError as error:
            self._reason = f"NVML unavailable: {error}"

    def unavailable_reason(self) -> str | None:
        return self._reason

    def gpus(self) -> list[GpuMemory]:
        if self._reason is not None:
            return []
        nvml = self._nvml
        readings = []
        # NVML handles are process-global but calls are not documented as thread-safe.
        with self._lock:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = _memory_info(nvml, handle)
                readings.append(
                    GpuMemory(
                        index=index,
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        total_bytes=int(memory.total),
                        used_bytes=int(memory.used),
                        free_bytes=int(memory.free),
                        other_processes_bytes=self._others(nvml, handle),
                    )
                )
        return readings

    def _others(self, nvml: Any, handle: Any) -> int | None:
        try:
            processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except nvml.NVMLError:
            return None
        total = 0
        for process in processes:
            # usedGpuMemory is None when the caller may not see it (NVML_VALUE_NOT_AVAILABLE,
            # e.g. under MIG or without permission): the estimate is then unknown.
            if process.usedGpuMemory is None:
                return None
            if process.pid != self._own_pid:
                total += int(process.usedGpuMemory)
        return total


def _memory_info(nvml: Any, handle: Any) -> Any:
    # The v2 struct (driver >= 510) separates memory the driver reserves for itself from "used";
    # the v1 call counts it as used, which understates what the agent may allocate.
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (TypeError, nvml.NVMLError):
            pass
    return nvml.nvmlDeviceGetMemoryInfo(handle)


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py versions return bytes for strings.
    return value.decode() if isinstance(value, bytes) else value
