"""Fakes for what cannot run on a CPU-only machine: NVML (there is no GPU driver here)."""

from __future__ import annotations

from collections.abc import Callable

from gpu_agent.nvml import GpuMemory


class FakeNvml:
    """An NVML that reports one GPU of ``total_bytes``.

    Used memory = ``other_bytes`` (settable: "another process allocates") + what the agent holds
    (``ours()``, wired to ``Agent.gpu_bytes_held`` by the tests), as the real NVML would report.
    """

    UUID = "GPU-00000000-fake-0000-0000-000000000000"

    def __init__(self, total_bytes: int, *, ours: Callable[[], int] = lambda: 0) -> None:
        self.total_bytes = total_bytes
        self.other_bytes = 0
        self.ours = ours

    def unavailable_reason(self) -> str | None:
        return None

    def gpus(self) -> list[GpuMemory]:
        used = min(self.total_bytes, self.other_bytes + self.ours())
        return [
            GpuMemory(
                index=0,
                uuid=self.UUID,
                name="FakeNvml GPU",
                total_bytes=self.total_bytes,
                used_bytes=used,
                free_bytes=self.total_bytes - used,
                other_processes_bytes=self.other_bytes,
            )
        ]


class FakeNoGpuNvml:
    """An NVML on a node without a driver, as :class:`PynvmlNvml` reports it there."""

    def unavailable_reason(self) -> str | None:
        return "NVML unavailable: FakeNoGpuNvml (no driver)"

    def gpus(self) -> list[GpuMemory]:
        return []


class FakeMultiNvml:
    """An NVML that reports ``count`` GPUs of ``total_bytes`` each; ``ours(uuid)`` is what the
    agent holds on one (wired to ``Agent.gpu_bytes_held`` by the tests)."""

    def __init__(
        self, total_bytes: int, *, count: int = 2, ours: Callable[[str], int] = lambda _u: 0
    ) -> None:
        self.total_bytes = total_bytes
        self.uuids = [f"GPU-00000000-fake-0000-0000-00000000000{i}" for i in range(count)]
        self.ours = ours

    def unavailable_reason(self) -> str | None:
        return None

    def gpus(self) -> list[GpuMemory]:
        gpus = []
        for index, uuid in enumerate(self.uuids):
            used = min(self.total_bytes, self.ours(uuid))
            gpus.append(
                GpuMemory(
                    index=index,
                    uuid=uuid,
                    name="FakeMultiNvml GPU",
                    total_bytes=self.total_bytes,
                    used_bytes=used,
                    free_bytes=self.total_bytes - used,
                    other_processes_bytes=0,
                )
            )
        return gpus
