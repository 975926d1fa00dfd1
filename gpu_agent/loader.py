"""One preload's load: up the tiers in a worker thread, progress to the caller, commit or clean up.

Owns the pipeline disk → host → GPU for one model (fetching only what the model is not already
held in, falling back to host memory on a node without a GPU), a directory model's hand-off
directory (materialised in the host tier whenever the target is host or GPU, its ``current`` link
switched as the load's last step; a new version of a held model, directory or single file, is
loaded beside the old one, which is dropped at commit, or kept until its leases end), the early
refusal of a model that can never fit, the bridge that
streams a worker thread's progress to the async caller, and the rule that a failed or cancelled
load leaves nothing behind: every file and allocation it created is removed, tiers the model
already held stay as they were. It must not validate requests (:mod:`gpu_agent.specs`) or
serialise preloads of one model (the agent does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import NotFound
from common.tiers import Tier
from gpu_agent.control import LoadControl
from gpu_agent.copy_engine import PinnedMapping, plan_placements
from gpu_agent.diskcache import remove_tree
from gpu_agent.events import EventBus
from gpu_agent.fetch import DiskCopy, ModelFetcher, source_bytes
from gpu_agent.gpu_tier import GpuTier
from gpu_agent.holdings import GpuResidency, Holding, Holdings, LoadRecord
from gpu_agent.host_tier import HostTier, unpin
from gpu_agent.progress import Emit, LoadProgress, Stage
from gpu_agent.reclaim import Reclaimer
from gpu_agent.safetensors_format import SafetensorsLayout
from gpu_agent.sources import CheckedSource
from gpu_agent.specs import CheckedWeights, PreloadSpec
from gpu_agent.yields import GpuYields
from protos import gpu_agent_pb2 as pb


@dataclass(slots=True, kw_only=True)
class _LoadResult:
    disk: DiskCopy
    host_files: list[Path] | None
    host_pinned: dict[Path, PinnedMapping]
    gpu: GpuResidency | None
    tier_message: str
    source: Tier
    """The tier the load started from (``REMOTE``: nothing was held)."""
    host_dir: Path | None = None
    """A directory model's revision directory, when this load materialised it."""
    replaces: bool = False
    """The model was held at another revision: the new holding replaces the old one."""


class Loader:
    """Loads models into the tiers and commits them to ``holdings``."""

    def __init__(
        self,
        holdings: Holdings,
        *,
        fetch: ModelFetcher,
        host: HostTier,
        gpu: GpuTier,
        reclaim: Reclaimer,
        yields: GpuYields,
        events: EventBus,
        monotonic: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._holdings = holdings
        self._yields = yields
        self._fetch = fetch
        self._host = host
        self._gpu = gpu
        self._reclaim = reclaim
        self._events = events
        self._mono = monotonic
        self._wall = wall_clock

    async def run(
        self,
        spec: PreloadSpec,
        checked: CheckedWeights,
        *,
        control: LoadControl,
        progress: LoadProgress,
    ) -> AsyncIterator[pb.PreloadProgress]:
        """Load ``spec`` in a worker thread, yielding its progress; the last message is DONE.

        The load is registered as in flight (so Evict and pressure can cancel it) until it ends;
        if the consumer stops iterating, the load is cancelled and cleaned up before this ends.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[pb.PreloadProgress | None] = asyncio.Queue()

        def emit(item: pb.PreloadProgress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> _LoadResult:
            try:
                return self._load(spec, checked, control=control, progress=progress, emit=emit)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        self._holdings.start_load(spec.model_id, control)
        task = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while (item := await queue.get()) is not None:
                yield item
            result = await task
        except BaseException as error:
            if not task.done():
                control.cancel("the caller went away")
                with contextlib.suppress(BaseException):
                    await asyncio.shield(task)
            self._events.publish(
                pb.Event.KIND_LOAD_FAILED, spec.model_id, reason=str(error) or type(error).__name__
            )
            raise
        finally:
            self._yields.end_fill(spec.model_id)
            self._holdings.end_load(spec.model_id)
        duration_s = self._mono() - progress.started
        holding, replaced = self._commit(spec, result, duration_s=duration_s)
        if replaced is not None:
            await asyncio.to_thread(
                self._reclaim.replace, replaced, reason=f"replaced by revision {holding.revision}"
            )
        self._events.publish(
            pb.Event.KIND_LOADED,
            spec.model_id,
            tier=holding.tier,
            nbytes=holding.file_bytes,
            duration_s=duration_s,
        )
        yield progress.message(
            Stage.STAGE_DONE,
            done=holding.file_bytes,
            total=holding.file_bytes,
            tier=holding.tier,
            message=result.tier_message,
        )

    def _commit(
        self, spec: PreloadSpec, result: _LoadResult, *, duration_s: float
    ) -> tuple[Holding, Holding | None]:
        """Record the load; the holding, and the one it replaced (another revision) if any."""
        replaced = None
        with self._holdings.lock:
            holding = self._holdings.get(spec.model_id)
            if holding is not None and result.replaces:
                # From here on Attach offers the new version; leases on the old one keep it.
                replaced = self._holdings.pop(spec.model_id)
                holding = None
            if holding is None:
                holding = Holding(
                    model_id=spec.model_id,
                    predicted_value=spec.predicted_value,
                    last_used=self._mono(),
                    disk_files=result.disk.files,
                    layouts=result.disk.layouts,
                    disk_bytes=result.disk.nbytes,
                    revision=result.disk.revision,
                    digest=result.disk.digest,
                    tree=result.disk.tree,
                )
                self._holdings.put(holding)
            holding.predicted_value = spec.predicted_value
            holding.last_used = self._mono()
            if result.host_files is not None:
                holding.host_files = result.host_files
                holding.host_pinned = result.host_pinned
                holding.host_dir = result.host_dir
            if result.gpu is not None:
                holding.gpu = result.gpu
            # Status reports this load once (the daemon learns weight lead times from it).
            holding.last_load = LoadRecord(
                duration_s=duration_s,
                finished_unix_s=self._wall(),
                source=result.source,
                target=holding.tier,
                nbytes=holding.file_bytes,
            )
            return holding, replaced

    # ------------------------------------------------------------------ in the worker thread

    def _load(
        self,
        spec: PreloadSpec,
        checked: CheckedWeights,
        *,
        control: LoadControl,
        progress: LoadProgress,
        emit: Emit,
    ) -> _LoadResult:
        model_id = spec.model_id
        created: list[Path] = []
        gpu: GpuResidency | None = None
        pinned: dict[Path, PinnedMapping] = {}
        try:
            with self._holdings.lock:
                existing = self._holdings.get(model_id)
                replaces = (
                    existing is not None
                    and bool(checked.sources)
                    and existing.revision != checked.revision
                )
                if replaces:
                    existing = None  # another revision: load this one beside it
                source = Tier.REMOTE if existing is None else existing.tier
                disk = None
                held_host = None
                held_pinned: dict[Path, PinnedMapping] = {}
                if existing is not None:
                    disk = DiskCopy(
                        list(existing.disk_files),
                        list(existing.layouts),
                        existing.disk_bytes,
                        existing.tree,
                        existing.revision,
                        existing.digest,
                    )
                    held_host = list(existing.host_files) if existing.host_files else None
                    held_pinned = dict(existing.host_pinned)
            if disk is None:
                if not checked.sources:
                    raise NotFound(f"model {model_id} was evicted before this preload ran")
                self._check_capacity_early(spec, checked.sources)
                disk = self._fetch.fetch(spec, checked, control=control, progress=progress,
                                         emit=emit, created=created)  # fmt: skip
            self._fetch.install_artifacts(spec, control=control, progress=progress, emit=emit)
            target = spec.target_tier
            message = ""
            if target == Tier.GPU and (reason := self._gpu.unavailable_reason()) is not None:
                target = Tier.HOST
                message = f"no GPU on this node ({reason}): kept in host memory"
            host_files = None
            host_dir = None
            # A directory model's host copy is the engines' hand-off: it is made for a GPU
            # target too (the GPU copy then fills from it).
            wants_host = target == Tier.HOST or (target == Tier.GPU and bool(disk.tree))
            if wants_host and held_host is None:
                host_files, host_dir = self._to_host(spec, disk, control=control,
                                                     progress=progress, emit=emit,
                                                     created=created)  # fmt: skip
                pinned = self._host.pin(
                    host_files, gpu_usable=self._gpu.unavailable_reason() is None
                )
                held_host, held_pinned = host_files, pinned
            if target == Tier.GPU:
                sources = held_host if held_host is not None else disk.files
                gpu = self._to_gpu(spec, sources, layouts=disk.layouts, control=control,
                                   progress=progress, emit=emit, pinned=held_pinned)  # fmt: skip
            if host_dir is not None:
                # The last step: only a complete load becomes what pods see at `current`.
                control.checkpoint()
                self._host.publish(model_id, disk.revision)
            return _LoadResult(disk=disk, host_files=host_files, host_pinned=pinned, gpu=gpu,
                               tier_message=message, source=source, host_dir=host_dir,
                               replaces=replaces)  # fmt: skip
        except BaseException:
            gpu = None
            unpin(pinned)
            for path in reversed(created):
                remove_tree(path)
            self._host.tidy(model_id)  # a directory model's base, if this load made it
            self._gpu.release_cache()
            raise

    def _check_capacity_early(self, spec: PreloadSpec, checked: Sequence[CheckedSource]) -> None:
        """Refuse at once a model that can never fit, before fetching anything."""
        size = source_bytes(checked)
        if size == 0:
            return
        self._fetch.check_room(size)
        if spec.target_tier == Tier.GPU and self._gpu.unavailable_reason() is None:
            self._gpu.check_fits(size)

    def _to_host(
        self,
        spec: PreloadSpec,
        disk: DiskCopy,
        *,
        control: LoadControl,
        progress: LoadProgress,
        emit: Emit,
        created: list[Path],
    ) -> tuple[list[Path], Path | None]:
        """Copy the model into the host tier: its files (and, for a directory model, the
        revision directory they lie in)."""
        need = sum(layout.file_bytes for layout in disk.layouts)
        need += sum(t.size_bytes for t in disk.tree if not t.is_weights)
        self._reclaim.make_host_room(spec.model_id, need, value=spec.predicted_value)
        reporter = progress.stage(Stage.STAGE_HOST, total=need, emit=emit)
        if disk.tree:
            host_dir = self._host.materialise(spec.model_id, disk.revision, disk.tree,
                                              control=control, progress=reporter.add,
                                              created=created)  # fmt: skip
            reporter.finish(tier=Tier.HOST)
            return [host_dir / t.path for t in disk.tree if t.is_weights], host_dir
        paths = self._host.copy_in(spec.model_id, disk.files, revision=disk.revision,
                                   control=control, progress=reporter.add,
                                   created=created)  # fmt: skip
        reporter.finish(tier=Tier.HOST)
        return paths, None

    def _to_gpu(
        self,
        spec: PreloadSpec,
        sources: list[Path],
        *,
        layouts: list[SafetensorsLayout],
        control: LoadControl,
        progress: LoadProgress,
        emit: Emit,
        pinned: dict[Path, PinnedMapping],
    ) -> GpuResidency:
        nbytes, placements = plan_placements(layouts, sources)
        with self._gpu.alloc_lock:
            gpu = self._gpu.choose(spec.gpu_uuid, skip=self._yields.yielded_uuids())
            # A GPU yielded to a starting replica takes no model until its hold ends; a yield
            # from now on cancels this fill (and waits for it) before it reports the GPU free.
            self._yields.check(gpu.uuid)
            self._yields.start_fill(spec.model_id, gpu.uuid, control)
            device = self._gpu.device(gpu)
            self._reclaim.make_gpu_room(gpu, spec.model_id, nbytes, value=spec.predicted_value)
            control.checkpoint()
            buffer = self._gpu.allocate(device, nbytes, gpu_uuid=gpu.uuid)
        reporter = progress.stage(Stage.STAGE_GPU, total=nbytes, emit=emit)
        from_host = self._host.holds(sources)
        try:
            self._gpu.fill(buffer, placements, control=control, progress=reporter.add,
                           pinned=pinned, from_host=from_host)  # fmt: skip
        except BaseException:
            del buffer
            raise
        reporter.finish(tier=Tier.GPU)
        return GpuResidency(buffer=buffer, placements=placements, gpu_uuid=gpu.uuid, nbytes=nbytes)
