"""GPUs yielded to starting replicas: which, until when, why, and the GPU loads they stop.

Owns the yield holds (YieldGpu): a GPU yielded until a monotonic time takes no GPU-tier load
until then, and the registry of GPU fills in flight (which GPU, which load's control), so a yield
can cancel the fills onto its GPUs. Serving engines (vLLM's ``gpu_memory_utilization``, SGLang's
``mem_fraction_static``) size their own pools from the free GPU memory they see at start-up and
refuse to start if another process holds it; the hold keeps the agent off the GPU until the
engine has taken its share. It must not move models between tiers (:mod:`gpu_agent.agent` does,
through :mod:`gpu_agent.reclaim` and :mod:`gpu_agent.loader`) or read NVML.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.errors import FailedPrecondition
from common.ids import ModelId
from gpu_agent.control import LoadControl


@dataclass(frozen=True, slots=True)
class YieldHold:
    """One GPU's hold: no GPU-tier load before ``until`` (monotonic seconds)."""

    gpu_uuid: str
    until: float
    reason: str


class GpuYields:
    """The yield holds of the node's GPUs and the GPU fills in flight (thread-safe)."""

    def __init__(self, *, monotonic: Callable[[], float]) -> None:
        self._mono = monotonic
        self._lock = threading.Lock()
        self._holds: dict[str, YieldHold] = {}
        self._fills: dict[ModelId, tuple[str, LoadControl]] = {}

    def hold(
        self, gpu_uuids: Iterable[str], *, hold_s: float, reason: str
    ) -> tuple[float, list[ModelId]]:
        """Yield ``gpu_uuids`` for ``hold_s`` from now (a longer hold already there stays) and
        cancel the GPU loads in flight onto them; (the hold's end, monotonic; those loads'
        models). Call under :attr:`GpuTier.alloc_lock`, so that no load chooses one of these
        GPUs unseen."""
        until = self._mono() + hold_s
        with self._lock:
            for uuid in gpu_uuids:
                held = self._holds.get(uuid)
                if held is None or held.until <= until:
                    self._holds[uuid] = YieldHold(uuid, until, reason)
            fills = [
                (model_id, control)
                for model_id, (uuid, control) in self._fills.items()
                if self._active(uuid) is not None
            ]
        for _, control in fills:
            control.cancel(f"GPU yielded to a starting replica ({reason}); preload it later")
        return until, [model_id for model_id, _ in fills]

    def active(self, gpu_uuid: str) -> YieldHold | None:
        """The hold on ``gpu_uuid`` if it has not ended."""
        with self._lock:
            return self._active(gpu_uuid)

    def _active(self, gpu_uuid: str) -> YieldHold | None:
        held = self._holds.get(gpu_uuid)
        if held is None:
            return None
        if held.until <= self._mono():
            del self._holds[gpu_uuid]
            return None
        return held

    def check(self, gpu_uuid: str) -> None:
        """:class:`FailedPrecondition` while ``gpu_uuid`` is yielded."""
        if (held := self.active(gpu_uuid)) is not None:
            left = held.until - self._mono()
            raise FailedPrecondition(
                f"GPU {gpu_uuid} is yielded to a starting replica ({held.reason}) for another "
                f"{left:.0f}s; preload to the host tier, onto another GPU, or after the hold"
            )

    def start_fill(self, model_id: ModelId, gpu_uuid: str, control: LoadControl) -> None:
        """``model_id``'s load allocates on ``gpu_uuid`` (call under the allocation lock, after
        :meth:`check`); a yield of that GPU cancels it until :meth:`end_fill`."""
        with self._lock:
            self._fills[model_id] = (gpu_uuid, control)

    def end_fill(self, model_id: ModelId) -> None:
        """``model_id``'s load ended (committed or failed)."""
        with self._lock:
            self._fills.pop(model_id, None)

    def yielded_uuids(self) -> frozenset[str]:
        """The GPUs yielded now."""
        return frozenset(h.gpu_uuid for h in self.yielded())

    def yielded(self) -> list[YieldHold]:
        """The holds that have not ended."""
        with self._lock:
            return [h for uuid in list(self._holds) if (h := self._active(uuid)) is not None]
