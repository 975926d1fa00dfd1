"""Taking memory back: dropping models from tiers, making room for a preload, relieving pressure.

Owns every eviction the agent performs: dropping one model from the GPU, host or disk tier (and
the event that says so), admission of a newcomer within free memory minus headroom (evicting only
models worth less per byte, by :mod:`gpu_agent.eviction`'s rule), and relief when other processes
push a GPU's free memory below the headroom, and the versions a newer one replaced: dropped at
once, or retired while leases still hold them and dropped when the last one ends (a retired
version asked for again is reinstated instead). Attached models and models being loaded are never
candidates. It must not load anything or speak gRPC.
"""

from __future__ import annotations

from collections.abc import Callable

from common.errors import ResourceExhausted
from common.ids import ModelId
from common.tiers import Tier
from gpu_agent.diskcache import DiskCache
from gpu_agent.events import EventBus
from gpu_agent.eviction import Candidate, admit, choose_victims
from gpu_agent.gpu_tier import GpuTier
from gpu_agent.holdings import Holding, Holdings
from gpu_agent.host_tier import HostTier
from gpu_agent.nvml import GpuMemory
from protos import gpu_agent_pb2 as pb

EVICT_REASON = "Evict"
PRESSURE_REASON = "memory pressure from other processes"


class Reclaimer:
    """Frees memory held for ``holdings`` in the three tiers."""

    def __init__(
        self,
        holdings: Holdings,
        *,
        disk: DiskCache,
        host: HostTier,
        gpu: GpuTier,
        events: EventBus,
        monotonic: Callable[[], float],
    ) -> None:
        self._holdings = holdings
        self._disk = disk
        self._host = host
        self._gpu = gpu
        self._events = events
        self._mono = monotonic

    # --------------------------------------------------------------------------- admission

    def make_host_room(self, model_id: ModelId, need: int, *, value: float) -> None:
        """Evict cheaper host-tier models until ``need`` bytes fit; :class:`ResourceExhausted`
        (evicting nothing) when even that would not make enough room."""
        with self._holdings.lock:
            free = self._host.free_bytes()
            candidates = self._holdings.host_candidates()
            newcomer = Candidate(model_id, need, value, self._mono())
            victims = admit(candidates, newcomer, free_bytes=free)
            if victims is None:
                raise ResourceExhausted(
                    f"model needs {need} bytes of host shared memory; {max(free, 0)} are free "
                    "beyond the headroom and evicting cheaper models would not make enough room"
                )
            for victim in victims:
                self.drop_host(victim.model_id, reason="host memory needed for a preload")

    def make_gpu_room(self, gpu: GpuMemory, model_id: ModelId, need: int, *, value: float) -> None:
        """Like :meth:`make_host_room` on ``gpu``; call under :attr:`GpuTier.alloc_lock`."""
        free = self._gpu.free_for_models(gpu)
        candidates = self._holdings.gpu_candidates(gpu.uuid)
        newcomer = Candidate(model_id, need, value, self._mono())
        victims = admit(candidates, newcomer, free_bytes=free)
        if victims is None:
            raise ResourceExhausted(
                f"model needs {need} bytes of GPU memory on {gpu.uuid}; {max(free, 0)} are "
                f"free beyond the {self._gpu.headroom_bytes}-byte headroom and evicting "
                "models worth less per byte would not make enough room"
            )
        for victim in victims:
            self.drop_gpu(victim.model_id, reason="GPU memory needed for a preload")

    # ---------------------------------------------------------------------------- dropping

    def drop_gpu(self, model_id: ModelId, *, reason: str, duration_s: float = 0.0) -> int:
        """Free the model's GPU allocation; the bytes freed (0 if it had none)."""
        with self._holdings.lock:
            holding = self._holdings.get(model_id)
            if holding is None or holding.gpu is None:
                return 0
            freed = holding.gpu.nbytes
            holding.gpu = None
        self._gpu.release_cache()
        self._events.publish(pb.Event.KIND_EVICTED, model_id, tier=Tier.GPU, nbytes=freed,
                             reason=reason, duration_s=duration_s)  # fmt: skip
        return freed

    def drop_host(self, model_id: ModelId, *, reason: str) -> int:
        """Delete the model's host-tier files; the bytes freed (0 if it had none)."""
        with self._holdings.lock:
            holding = self._holdings.get(model_id)
            if holding is None or holding.host_files is None:
                return 0
            freed = self._remove_host(holding)
        self._events.publish(pb.Event.KIND_EVICTED, model_id, tier=Tier.HOST, nbytes=freed,
                             reason=reason)  # fmt: skip
        return freed

    def evict(self, model_id: ModelId, tier: Tier | None) -> tuple[int, list[Tier]]:
        """Drop the model from ``tier`` (every tier when ``None``); (bytes freed, tiers dropped).

        Dropping the disk tier drops the model entirely: without its files it cannot be refilled.
        """
        freed = 0
        tiers = []
        everything = tier is None
        if everything or tier == Tier.GPU:
            n = self.drop_gpu(model_id, reason=EVICT_REASON)
            freed += n
            if n or tier == Tier.GPU:
                tiers.append(Tier.GPU)
        if everything or tier == Tier.HOST:
            n = self.drop_host(model_id, reason=EVICT_REASON)
            freed += n
            if n or tier == Tier.HOST:
                tiers.append(Tier.HOST)
        if everything or tier == Tier.DISK:
            with self._holdings.lock:
                holding = self._holdings.pop(model_id)
                if holding is not None and not everything:
                    self._drop_in_memory(holding)
            n = self._disk.remove(model_id, holding.revision if holding is not None else "")
            freed += n
            tiers.append(Tier.DISK)
            self._events.publish(pb.Event.KIND_EVICTED, model_id, tier=Tier.DISK, nbytes=n,
                                 reason=EVICT_REASON)  # fmt: skip
        return freed, tiers

    def _remove_host(self, holding: Holding) -> int:
        """Delete ``holding``'s host copy (a directory model's revision directory); call under
        the lock. The bytes freed."""
        holding.host_files = None
        pinned, holding.host_pinned = holding.host_pinned, {}
        host_dir, holding.host_dir = holding.host_dir, None
        if host_dir is not None:
            return self._host.remove_revision(holding.model_id, holding.revision, pinned)
        return self._host.remove(holding.model_id, pinned, revision=holding.revision)

    def _drop_in_memory(self, holding: Holding) -> None:
        holding.gpu = None
        if holding.host_files is not None:
            self._remove_host(holding)
        self._gpu.release_cache()

    def discard(self, holding: Holding, *, reason: str) -> int:
        """Free every tier of a holding no longer in the registry (a revision replaced by a newer
        one); the bytes freed. Its disk directory goes too: the new revision has its own."""
        with self._holdings.lock:
            gpu_bytes = holding.gpu.nbytes if holding.gpu is not None else 0
            host_bytes = self._remove_host(holding) if holding.host_files is not None else 0
            holding.gpu = None
        self._gpu.release_cache()
        disk_bytes = self._disk.remove(holding.model_id, holding.revision)
        freed = ((Tier.GPU, gpu_bytes), (Tier.HOST, host_bytes), (Tier.DISK, disk_bytes))
        for tier, nbytes in freed:
            if nbytes:
                self._events.publish(pb.Event.KIND_EVICTED, holding.model_id, tier=tier,
                                     nbytes=nbytes, reason=reason)  # fmt: skip
        return gpu_bytes + host_bytes + disk_bytes

    # ---------------------------------------------------------------------------- versions

    def replace(self, old: Holding, *, reason: str) -> int:
        """``old`` was replaced by a newer version of its model (and is out of the registry):
        retired, whole, while leases hold it (processes attached to it keep reading it), else
        discarded. The bytes freed now."""
        with self._holdings.lock:
            leased = bool(old.leases)
            if leased:
                self._holdings.retire(old)
        if leased:
            self._disk.retire(old.model_id, old.revision)
            return 0
        return self.discard(old, reason=reason)

    def reinstate(self, back: Holding) -> Holding | None:
        """Make a retired version (taken from the retired ones) the model's current one again;
        the version it displaces, if any, which the caller passes to :meth:`replace`."""
        with self._holdings.lock:
            displaced = self._holdings.pop(back.model_id)
            self._holdings.put(back)
        self._disk.reinstate(back.model_id, back.revision)
        if back.host_dir is not None:
            self._host.publish(back.model_id, back.revision)
        return displaced

    def discard_retired(self, model_id: ModelId, *, leased_too: bool = False) -> int:
        """Drop ``model_id``'s retired versions that no lease holds any more (every one with
        ``leased_too``: a forced Evict); the bytes freed."""
        reason = EVICT_REASON if leased_too else "an older version: its last lease ended"
        freed = 0
        for old in self._holdings.take_retired(model_id, unleased=not leased_too):
            freed += self.discard(old, reason=reason)
        return freed

    # ---------------------------------------------------------------------------- pressure

    def relieve_pressure(self) -> int:
        """Evict GPU-tier models, lowest value density first, where free < headroom.

        Returns the bytes freed. If evicting every candidate on a GPU is not enough, the loads in
        flight are cancelled too.
        """
        started = self._mono()
        freed_total = 0
        for gpu in self._gpu.gpus():
            deficit = -self._gpu.free_for_models(gpu)
            if deficit <= 0:
                continue
            self._events.publish(
                pb.Event.KIND_PRESSURE,
                ModelId(""),
                nbytes=deficit,
                reason=f"GPU {gpu.uuid}: free {gpu.free_bytes} < headroom",
            )
            victims = choose_victims(self._holdings.gpu_candidates(gpu.uuid), deficit)
            freed = 0
            for victim in victims:
                freed += self.drop_gpu(
                    victim.model_id, reason=PRESSURE_REASON, duration_s=self._mono() - started
                )
            if freed < deficit:
                self._holdings.cancel_loads(PRESSURE_REASON)
            freed_total += freed
        return freed_total
