"""The GPU agent's core: one :class:`Agent` that coordinates the tiers behind the GpuAgent API.

Owns the wiring of the parts (specs, fetch, host and GPU tiers, reclaim, leases, events, status),
start-up recovery, the per-model serialisation of Preload and Evict, and the agent's public
operations. The parts do the work; this module must not grow load, eviction or hand-off logic of
its own. It speaks the proto's message types at its edges (they are the contract) but knows
nothing of gRPC servers, auth or status codes: it raises :mod:`common.errors` kinds and
:mod:`gpu_agent.server` maps them.

I/O boundaries are constructor parameters with production defaults: NVML (``nvml``), the clocks
(``wall_clock`` for timestamps and request deadlines, ``monotonic`` for durations), the mapping
from an NVML GPU to a torch device (``gpu_device``), HTTP (``http_session``) and the tier roots
(from the config).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import requests
import torch

from common.errors import DataLoss, FailedPrecondition, InvalidInput, NotFound, PrewarmError
from common.ids import ModelId
from common.tiers import Tier
from gpu_agent.config import AgentConfig
from gpu_agent.control import LoadControl
from gpu_agent.diskcache import DiskCache
from gpu_agent.events import EventBus, EventListener, timestamp
from gpu_agent.expansion import DirectoryExpander
from gpu_agent.fetch import ModelFetcher
from gpu_agent.gpu_tier import GpuTier, default_gpu_device
from gpu_agent.holdings import Holding, Holdings
from gpu_agent.host_tier import HostTier
from gpu_agent.leases import Leases
from gpu_agent.loader import Loader
from gpu_agent.model_dir import WEIGHT_SUFFIX, TreeFile, model_slug
from gpu_agent.model_locks import ModelLocks
from gpu_agent.nvml import GpuMemory, Nvml, PynvmlNvml
from gpu_agent.progress import LoadProgress, Stage
from gpu_agent.reclaim import Reclaimer
from gpu_agent.safetensors_format import read_layout
from gpu_agent.sources import Fetcher, SourcePolicy
from gpu_agent.specs import CheckedWeights, PreloadSpec, check_spec, validate_model_id
from gpu_agent.status import status_response
from gpu_agent.versions import weights_digest, with_revision
from gpu_agent.yields import GpuYields
from protos import gpu_agent_pb2 as pb
from protos.tiers import agent_tier

log = logging.getLogger(__name__)

LEASE_SWEEP_S = 1.0
"""How often expired leases are looked for (at most; sooner when one is due)."""
YIELD_REASON_MAX = 256
"""The longest YieldGpu reason (characters); it is echoed in Status, events and logs."""


class Agent:
    """The node's model holdings and the operations on them. Call :meth:`recover` before use."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        nvml: Nvml | None = None,
        gpu_device: Callable[[GpuMemory], torch.device] | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        http_session: requests.Session | None = None,
        node_name: str = "",
    ) -> None:
        self.config = config
        self._wall = wall_clock
        self._mono = monotonic
        self._node = node_name or os.uname().nodename
        self._holdings = Holdings()
        self._events = EventBus(wall_clock=wall_clock)
        self._disk = DiskCache(Path(config.cache_dir))
        self._policy = SourcePolicy(
            config.allowed_schemes,
            file_roots=config.allowed_file_roots,
            http_prefixes=config.allowed_http_prefixes,
            require_sha256=config.require_sha256,
            remote=config.remote,
        )
        fetcher = Fetcher(
            http_session,
            parallel_ranges=config.http_parallel_ranges,
            range_bytes=config.http_range_bytes,
            timeout_s=config.http_timeout_s,
            remote=config.remote,
            require_checksum=config.require_sha256,
        )
        self._expander = DirectoryExpander(
            self._policy,
            config.remote,
            require_checksum=config.require_sha256,
            session=http_session,
            timeout_s=config.http_timeout_s,
        )
        self._fetch = ModelFetcher(
            self._disk,
            fetcher,
            self._policy,
            headroom_bytes=config.disk_headroom_bytes,
            allowed_install_roots=config.allowed_install_roots,
        )
        self._host = HostTier(
            Path(config.shm_dir),
            headroom_bytes=config.host_headroom_bytes,
            host_fill=config.host_fill,
            max_bytes=config.host_max_bytes,
        )
        self._gpu = GpuTier(
            nvml if nvml is not None else PynvmlNvml(),
            gpu_device=gpu_device if gpu_device is not None else default_gpu_device,
            headroom_bytes=config.headroom_bytes,
            host_fill=config.host_fill,
            chunk_bytes=config.chunk_bytes,
            copy_workers=config.copy_workers,
        )
        self._reclaim = Reclaimer(
            self._holdings,
            disk=self._disk,
            host=self._host,
            gpu=self._gpu,
            events=self._events,
            monotonic=monotonic,
        )
        self._yields = GpuYields(monotonic=monotonic)
        self._loader = Loader(
            self._holdings,
            fetch=self._fetch,
            host=self._host,
            gpu=self._gpu,
            reclaim=self._reclaim,
            yields=self._yields,
            events=self._events,
            monotonic=monotonic,
            wall_clock=wall_clock,
        )
        self._leases = Leases(
            self._holdings, gpu=self._gpu, events=self._events, monotonic=monotonic
        )
        self._model_locks = ModelLocks()

    # ----------------------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """Start clean after any exit, a SIGKILL mid-load included.

        Removes partial files, incomplete model directories and replaced versions from the disk
        tier and keeps the complete ones as disk-tier holdings; empties the host tier (its files
        belonged to the previous process, and processes that still map them keep their mappings
        after unlink). Only what the agent marked as its own is removed from either tier
        (:mod:`gpu_agent.tier_roots`). GPU memory of a dead process is freed by the driver.
        """
        self._host.reset()
        for manifest in self._disk.recover():
            model_id = ModelId(manifest.model_id)
            directory = self._disk.model_dir(model_id, manifest.revision)
            tree = tuple(
                TreeFile(f.path, directory / f.name, f.size_bytes) for f in manifest.files if f.path
            )
            paths = [
                directory / f.name
                for f in manifest.files
                if not f.path or f.path.endswith(WEIGHT_SUFFIX)
            ]
            try:
                layouts = [read_layout(path) for path in paths]
            except DataLoss:
                self._disk.remove(model_id, manifest.revision)
                continue
            if model_id in self._holdings:
                # Two revisions on disk: an agent killed while replacing one. Keep the first
                # found; the next Preload of the other fetches only what it misses.
                self._disk.remove(model_id, manifest.revision)
                continue
            self._holdings.put(
                Holding(
                    model_id=model_id,
                    predicted_value=manifest.predicted_value,
                    last_used=self._mono(),
                    disk_files=paths,
                    layouts=layouts,
                    disk_bytes=sum(f.size_bytes for f in manifest.files),
                    revision=manifest.revision,
                    digest=manifest.digest,
                    tree=tree,
                )
            )

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that Watch subscribers live on (events from threads are posted to it)."""
        self._events.bind_loop(loop)

    def gpu_unavailable_reason(self) -> str | None:
        """Why GPU tiers are not served here, or ``None`` when they are."""
        return self._gpu.unavailable_reason()

    # ------------------------------------------------------------------------------- preload

    def validate_model_id(self, model_id: str) -> ModelId:
        """The id as a :class:`ModelId`; :class:`InvalidInput` if empty, too long or odd."""
        return validate_model_id(model_id, max_len=self.config.max_model_id_len)

    async def preload(
        self, spec: PreloadSpec, *, grpc_time_remaining_s: float | None = None
    ) -> AsyncIterator[pb.PreloadProgress]:
        """Bring ``spec.model_id`` up to ``spec.target_tier``, yielding progress; last is DONE.

        Validation errors are raised before anything is written. On any failure (deadline,
        checksum, corrupt file, no memory, cancellation by Evict or by the consumer closing the
        iterator) every file and allocation this call created is removed before the error
        propagates; tiers the model already held stay as they were.
        """
        held = spec.model_id in self._holdings
        deadline = self._deadline(spec, grpc_time_remaining_s)
        # A directory source (hf://org/name@rev, s3://bucket/prefix/) is listed first, in a thread
        # within the deadline; its revision comes from the listing unless the request names one.
        spec, expand = await self._expander.expand_spec(
            spec, remaining_s=None if deadline is None else deadline - self._mono()
        )
        checked = check_spec(
            spec, config=self.config, policy=self._policy, held=held, expand=expand
        )
        checked = with_revision(checked)  # a single-file model's version is its digest
        if checked.is_directory:
            self._check_directory(spec.model_id, checked)
        self._check_not_yielded(spec)
        model_id = spec.model_id
        progress = LoadProgress(model_id, started=self._mono(), monotonic=self._mono)
        control = LoadControl(deadline, clock=self._mono)
        control.checkpoint()
        yield progress.message(Stage.STAGE_QUEUED)
        async with self._model_locks.hold(model_id):
            control.checkpoint()
            if checked.sources:
                await self._reinstate(model_id, checked)
            with self._holdings.lock:
                existing = self._holdings.get(model_id)
                tier = None
                same = not checked.sources or existing is None
                same = same or (existing is not None and existing.revision == checked.revision)
                if same and existing is not None and checked.sources:
                    self._check_same_version(existing, checked)
                if same and existing is not None and self._satisfies(existing, spec.target_tier):
                    existing.predicted_value = spec.predicted_value
                    existing.last_used = self._mono()
                    tier = existing.tier
            if tier is not None:
                yield progress.message(Stage.STAGE_DONE, tier=tier, message="already held")
                return
            async for item in self._loader.run(spec, checked, control=control, progress=progress):
                yield item
            # The version this load replaced is dropped now, unless leases still hold it.
            await asyncio.to_thread(self._reclaim.discard_retired, model_id)

    async def _reinstate(self, model_id: ModelId, checked: CheckedWeights) -> None:
        """A retired version (replaced, still leased) with the weights asked for becomes the
        model's current one again (a roll-back); the version it displaces is replaced as at a
        commit. Call under the model's lock."""
        for back in self._holdings.take_retired(model_id, revision=checked.revision):
            displaced = await asyncio.to_thread(self._reclaim.reinstate, back)
            if displaced is not None:
                await asyncio.to_thread(
                    self._reclaim.replace, displaced, reason=f"revision {back.revision} is back"
                )

    @staticmethod
    def _check_same_version(existing: Holding, checked: CheckedWeights) -> None:
        """:class:`FailedPrecondition` when a request names the held revision with other files
        (a named revision's files must not change; an unnamed one is their digest)."""
        digest = weights_digest(checked)
        if existing.digest and existing.digest != digest:
            raise FailedPrecondition(
                f"model {existing.model_id} is held at revision {existing.revision} with other "
                "files (their sha256s differ); give the new files another revision, or evict "
                "the model first"
            )

    def _check_directory(self, model_id: ModelId, checked: CheckedWeights) -> None:
        """Refuse, before anything is written, a directory model that would share its slug with
        another held model."""
        slug = model_slug(model_id)
        with self._holdings.lock:
            for other in self._holdings.all():
                clash = other.model_id != model_id and model_slug(other.model_id) == slug
                if clash and other.is_directory:
                    raise FailedPrecondition(
                        f"models {other.model_id} and {model_id} would share the directory "
                        f"<shm_dir>/models/{slug}; evict {other.model_id} first or rename one"
                    )

    def _check_not_yielded(self, spec: PreloadSpec) -> None:
        """Refuse, before anything is written, a GPU-tier Preload that no GPU could take now
        because its GPU (or every GPU) is yielded to a starting replica."""
        if spec.target_tier != Tier.GPU or self.gpu_unavailable_reason() is not None:
            return
        if spec.gpu_uuid:
            self._yields.check(spec.gpu_uuid)
            return
        yielded = self._yields.yielded_uuids()
        if yielded and all(g.uuid in yielded for g in self._gpu.gpus()):
            self._gpu.choose("", skip=yielded)  # raises FailedPrecondition with the advice

    def _deadline(self, spec: PreloadSpec, grpc_remaining: float | None) -> float | None:
        candidates = []
        if spec.deadline_unix_s is not None:
            candidates.append(self._mono() + (spec.deadline_unix_s - self._wall()))
        if grpc_remaining is not None:
            candidates.append(self._mono() + grpc_remaining)
        return min(candidates) if candidates else None

    def _satisfies(self, holding: Holding, target: Tier) -> bool:
        if target == Tier.GPU and self.gpu_unavailable_reason() is not None:
            target = Tier.HOST
        return holding.tier >= target

    # ------------------------------------------------------------------------------ eviction

    async def evict(
        self, model_id: str, *, tier: Tier | None = None, force: bool = False
    ) -> pb.EvictResponse:
        """Drop ``model_id`` from ``tier``; ``None`` (or ``Tier.REMOTE``) drops it from all.

        A load in flight for the model is cancelled first (that Preload fails with
        FAILED_PRECONDITION and leaves nothing behind). :class:`NotFound` when the model is
        neither held nor loading; :class:`FailedPrecondition` when it is attached and not
        ``force``. A forced Evict from every tier drops the model's older versions that leases
        still held too.
        """
        mid = self.validate_model_id(model_id)
        loading = self._holdings.load_control(mid)
        if loading is not None:
            loading.cancel("evicted while loading; preload again if it is still wanted")
        async with self._model_locks.hold(mid):
            with self._holdings.lock:
                holding = self._holdings.get(mid)
                if holding is None:
                    if loading is not None:
                        return pb.EvictResponse(model_id=mid)
                    raise NotFound(f"model {mid} is not held by this agent")
                if holding.leases and not force:
                    raise FailedPrecondition(
                        f"model {mid} is attached by {len(holding.leases)} process(es); "
                        "release it first or evict with force"
                    )
            drop = None if tier == Tier.REMOTE else tier
            freed, tiers = await asyncio.to_thread(self._reclaim.evict, mid, drop)
            if force and drop is None:
                freed += await asyncio.to_thread(
                    self._reclaim.discard_retired, mid, leased_too=True
                )
        return pb.EvictResponse(
            model_id=mid, bytes_freed=freed, tiers=[agent_tier(t) for t in tiers]
        )

    def relieve_pressure(self) -> int:
        """Evict GPU-tier models, lowest value density first, where free < headroom.

        Returns the bytes freed. Called by :meth:`watch_pressure` every poll interval and usable
        directly (benchmarks). Attached models and models being loaded are not candidates; if
        evicting every candidate is not enough, loads in flight on that GPU are cancelled too.
        """
        return self._reclaim.relieve_pressure()

    async def watch_pressure(self, stop: asyncio.Event) -> None:
        """Poll NVML every ``pressure_poll_interval_s`` and relieve pressure until ``stop``."""
        if self.gpu_unavailable_reason() is not None:
            return
        while not stop.is_set():
            await asyncio.to_thread(self.relieve_pressure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.pressure_poll_interval_s)

    # ------------------------------------------------------------------------ co-residency

    async def yield_gpu(
        self, gpu_uuids: Sequence[str], *, reason: str, hold_s: float = 0.0
    ) -> pb.YieldGpuResponse:
        """Give ``gpu_uuids`` (empty: every GPU) to a replica starting on this node.

        Serving engines measure free GPU memory once, at start-up, and refuse to start (or size
        their KV cache too small) while another process holds it, so the agent steps aside:
        GPU-tier Preloads onto these GPUs are refused for ``hold_s`` (0: the configured
        ``yield_hold_s``; a second call renews), GPU loads in flight onto them are cancelled and
        waited for, and every model held there moves down to the host tier (kept on disk when
        the host tier has no room: weights are never dropped). Attached models lose the agent's
        reference too; their memory returns once the attached processes close it. Nothing to do
        on a node without a GPU. :class:`NotFound` for a GPU NVML does not report,
        :class:`InvalidInput` for a bad ``hold_s`` or an over-long reason.
        """
        if not math.isfinite(hold_s) or hold_s < 0 or hold_s > self.config.yield_max_hold_s:
            raise InvalidInput(
                f"hold_s must be between 0 (the agent's default, {self.config.yield_hold_s}s) "
                f"and {self.config.yield_max_hold_s}s; got {hold_s}"
            )
        if len(reason) > YIELD_REASON_MAX:
            raise InvalidInput(f"reason is longer than {YIELD_REASON_MAX} characters; shorten it")
        reason = reason or "a replica is starting"
        if self.gpu_unavailable_reason() is not None:
            return pb.YieldGpuResponse()
        known = [g.uuid for g in self._gpu.gpus()]
        for uuid in gpu_uuids:
            if uuid not in known:
                raise NotFound(f"no GPU with uuid {uuid} on this node (Status lists its GPUs)")
        targets = list(dict.fromkeys(gpu_uuids)) or known
        hold = hold_s or self.config.yield_hold_s

        def hold_gpus() -> tuple[float, list[ModelId]]:
            with self._gpu.alloc_lock:
                return self._yields.hold(targets, hold_s=hold, reason=reason)

        until, cancelled = await asyncio.to_thread(hold_gpus)
        # A cancelled load cleans up at its next checkpoint; one that finished its copy first
        # commits, and is demoted below with the others. A Preload holds its model's lock until
        # it has done either, so taking the lock waits for it.
        for model_id in cancelled:
            async with self._model_locks.hold(model_id):
                pass
        response = pb.YieldGpuResponse(gpu_uuids=targets)
        response.yielded_until.CopyFrom(timestamp(self._wall() + (until - self._mono())))
        with self._holdings.lock:
            on_gpus = [
                (h.model_id, h.predicted_value)
                for h in self._holdings.all()
                if h.gpu is not None and h.gpu.gpu_uuid in targets
            ]
        why = f"GPU yielded to a starting replica: {reason}"
        for model_id, value in on_gpus:
            async with self._model_locks.hold(model_id):
                response.gpu_bytes_freed += await asyncio.to_thread(
                    self._reclaim.drop_gpu, model_id, reason=why
                )
            if await self._keep_in_host(model_id, value):
                response.demoted_model_ids.append(model_id)
            else:
                response.kept_on_disk_model_ids.append(model_id)
        log.info(
            "gpus yielded",
            extra={"gpus": targets, "reason": reason, "hold_s": hold,
                   "freed_bytes": response.gpu_bytes_freed},
        )  # fmt: skip
        return response

    async def _keep_in_host(self, model_id: ModelId, value: float) -> bool:
        """Bring a model demoted from the GPU to the host tier (from its disk copy); whether it
        is there now. Without host room it stays on disk, where the next Preload finds it."""
        spec = PreloadSpec(
            model_id=model_id, weights=(), target_tier=Tier.HOST, predicted_value=value
        )
        try:
            async for _ in self.preload(spec):
                pass
        except PrewarmError as error:
            log.warning(
                "model demoted from the GPU kept on disk only",
                extra={"model_id": model_id, "error": str(error)},
            )
        holding = self._holdings.get(model_id)
        return holding is not None and holding.tier >= Tier.HOST

    # -------------------------------------------------------------------------------- status

    def gpu_bytes_held(self, gpu_uuid: str | None = None) -> int:
        """Bytes of GPU memory held by this agent's models (on one GPU, or all)."""
        return self._holdings.gpu_bytes(gpu_uuid)

    def tier_room(self, gpus: Sequence[GpuMemory] | None = None) -> dict[Tier, int]:
        """Per tier, the bytes models may still take now: free space beyond the tier's headroom
        (negative when the headroom is eaten into; GPUs yielded to starting replicas count no
        room, and no GPU here means none). ``gpus``: NVML readings already taken."""
        gpus = self._gpu.gpus() if gpus is None else gpus
        yielded = {h.gpu_uuid for h in self._yields.yielded()}
        return {
            Tier.DISK: self._fetch.free_bytes(),
            Tier.HOST: self._host.free_bytes(),
            # A yielded GPU takes no model until its hold ends: no room there.
            Tier.GPU: sum(
                max(self._gpu.free_for_models(g), 0) for g in gpus if g.uuid not in yielded
            ),
        }

    def gpus(self) -> list[GpuMemory]:
        """NVML's readings of this node's GPUs now (none when the GPU tier is unavailable)."""
        return self._gpu.gpus()

    def status(self) -> pb.StatusResponse:
        """GPUs, tier usage and holdings now."""
        gpus = self._gpu.gpus()
        now_wall, now_mono = self._wall(), self._mono()
        yielded = {
            h.gpu_uuid: (now_wall + (h.until - now_mono), h.reason) for h in self._yields.yielded()
        }
        room = self.tier_room(gpus)
        return status_response(
            self._holdings,
            current_link=self._host.current_link,
            node=self._node,
            gpu_unavailable_reason=self.gpu_unavailable_reason(),
            gpus=gpus,
            headroom_bytes=self.config.headroom_bytes,
            room_bytes=room,
            yielded=yielded,
            wall_clock=self._wall,
            monotonic=self._mono,
        )

    def holding(self, model_id: str) -> Holding | None:
        """The live holding of ``model_id``, or ``None``; for reading only (tests, benchmarks)."""
        return self._holdings.get(ModelId(model_id))

    def loading(self) -> frozenset[ModelId]:
        """The models with a preload in flight."""
        return self._holdings.loading()

    # ------------------------------------------------------------------------------- hand-off

    def attach(
        self,
        model_id: str,
        *,
        max_tier: Tier = Tier.GPU,
        client_pid: int,
        client_pid_namespace: str = "",
        lease_ttl_s: float = 0.0,
        lease_only: bool = False,
    ) -> pb.AttachResponse:
        """Open a lease on a held model and describe how to map it without copying.

        GPU tier: a CUDA IPC handle of the model's one allocation (only when it lives on a CUDA
        device). Host tier: the shared-memory files to mmap. Disk tier: the cached files, which
        the client loads normally. ``lease_ttl_s`` > 0: the lease ends unless renewed
        (:meth:`renew_lease`) within that time; a client in the agent's PID namespace also loses
        it when it exits, and a lease that could end neither way is refused (see
        :mod:`gpu_agent.leases`). ``lease_only``: just the lease (a pod's hold sidecar).
        :class:`NotFound` if the model is not held.
        """
        mid = self.validate_model_id(model_id)
        try:
            return self._leases.attach(mid, max_tier=max_tier, client_pid=client_pid,
                                       client_pid_namespace=client_pid_namespace,
                                       ttl_s=lease_ttl_s, lease_only=lease_only)  # fmt: skip
        except NotFound:
            self._events.publish(pb.Event.KIND_ATTACH_MISSED, mid, reason=f"pid {client_pid}")
            raise

    async def release(self, lease_id: str) -> None:
        """End a lease; :class:`NotFound` if it does not exist (already released). An older
        version of the model that only this lease still held is dropped now."""
        model_id = self._leases.release(lease_id)
        await self._drop_released_versions([model_id])

    def renew_lease(self, lease_id: str) -> float:
        """Keep a TTL lease alive; its TTL. :class:`NotFound` once it has ended."""
        return self._leases.renew(lease_id)

    def expire_leases(self) -> list[str]:
        """End the leases whose renewals stopped; their ids (see :meth:`watch_leases`)."""
        return self._leases.expire()

    async def watch_leases(self, stop: asyncio.Event) -> None:
        """End expired leases until ``stop``: every :data:`LEASE_SWEEP_S`, sooner when one is
        due, so a lease lasts at most its TTL plus a sweep."""
        while not stop.is_set():
            self.expire_leases()
            await self._drop_released_versions(self._holdings.retired_unleased())
            wait_s = LEASE_SWEEP_S
            if (due := self._leases.next_expiry()) is not None:
                wait_s = min(wait_s, max(due - self._mono(), 0.01))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)

    async def _drop_released_versions(self, model_ids: Sequence[ModelId]) -> None:
        """Drop the retired versions of ``model_ids`` whose last lease ended, each under its
        model's lock (so never while a Preload of that model runs)."""
        for model_id in model_ids:
            if not any(not h.leases for h in self._holdings.retired(model_id)):
                continue
            async with self._model_locks.hold(model_id):
                await asyncio.to_thread(self._reclaim.discard_retired, model_id)

    def model_locks(self) -> int:
        """The model ids with a lock now (held or waited for); for tests."""
        return len(self._model_locks)

    # -------------------------------------------------------------------------------- events

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(kind, model_id, tier, nbytes, reason, duration_s)`` for every event,
        synchronously in the publishing thread (metrics use this; keep listeners cheap)."""
        self._events.add_listener(listener)

    def events(self, model_ids: Sequence[str] = ()) -> AsyncIterator[pb.Event]:
        """Events from now on (optionally only for ``model_ids``) until the consumer stops."""
        return self._events.subscribe(model_ids)
