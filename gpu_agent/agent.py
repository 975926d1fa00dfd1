"""The GPU agent's core: the models it holds per tier, loading, eviction, pressure and hand-off.

Owns the registry of holdings (disk → host shared memory → GPU), the per-model serialisation of
Preload/Evict, admission within free memory minus headroom, the pressure watcher that evicts
lowest value density first, and the lease bookkeeping behind Attach/Release. It speaks the
proto's message types at its edges (they are the contract) but knows nothing of gRPC servers,
auth or status codes: it raises :mod:`common.errors` kinds and :mod:`gpu_agent.server` maps them.

I/O boundaries are constructor parameters with production defaults: NVML (``nvml``), the clocks
(``wall_clock`` for timestamps and request deadlines, ``monotonic`` for durations), the mapping
from an NVML GPU to a torch device (``gpu_device``), HTTP (``http_session``) and the tier roots
(from the config).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import safetensors.torch
import torch
from google.protobuf.timestamp_pb2 import Timestamp

from common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from common.ids import ModelId
from gpu_agent import artifacts as artifact_install
from gpu_agent.config import AgentConfig
from gpu_agent.control import LoadControl
from gpu_agent.copy_engine import (
    PinnedMapping,
    Placement,
    StagingPool,
    fill,
    fill_registered,
    plan_placements,
)
from gpu_agent.diskcache import CachedFile, DiskCache, Manifest, model_key, remove_tree
from gpu_agent.eviction import Candidate, admit, choose_victims
from gpu_agent.nvml import GpuMemory, Nvml, PynvmlNvml
from gpu_agent.safetensors_format import SafetensorsLayout, read_layout
from gpu_agent.sources import CheckedSource, Fetcher, SourcePolicy, copy_with_progress
from protos import gpu_agent_pb2 as pb

log = logging.getLogger(__name__)

EventListener = Callable[[int, ModelId, int, int, str, float], None]
"""(kind, model_id, tier, nbytes, reason, duration_s) of one agent event."""

_MODEL_ID = re.compile(r"^[A-Za-z0-9._:/@+-]+$")
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
PROGRESS_INTERVAL_S = 0.05
TIER_NAMES: dict[int, str] = {pb.TIER_DISK: "disk", pb.TIER_HOST: "host", pb.TIER_GPU: "gpu"}
Stage = pb.PreloadProgress.Stage


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One file to fetch: URI and expected sha256 (hex, may be empty if the config allows)."""

    uri: str
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class ArtifactSpec:
    """One compiled artifact: where from, which kind (``pb.ArtifactKind``), where to install."""

    source: SourceSpec
    kind: int
    install_dir: str


@dataclass(frozen=True, slots=True)
class PreloadSpec:
    """A Preload request in the agent's terms. ``deadline_unix_s`` is wall-clock seconds."""

    model_id: ModelId
    weights: tuple[SourceSpec, ...]
    artifacts: tuple[ArtifactSpec, ...] = ()
    target_tier: int = pb.TIER_GPU
    predicted_value: float = 0.0
    deadline_unix_s: float | None = None
    gpu_uuid: str = ""
    allow_pickle: bool = False


@dataclass(slots=True)
class GpuResidency:
    """A model's one allocation on one GPU and where each file's data lies in it."""

    buffer: torch.Tensor
    placements: list[Placement]
    gpu_uuid: str
    nbytes: int


@dataclass(slots=True)
class Holding:
    """Everything the agent holds for one model. Mutated only under ``Agent._lock``."""

    model_id: ModelId
    predicted_value: float
    last_used: float
    disk_files: list[Path]
    layouts: list[SafetensorsLayout]
    disk_bytes: int
    host_files: list[Path] | None = None
    host_pinned: dict[Path, PinnedMapping] = field(default_factory=dict)
    gpu: GpuResidency | None = None
    leases: dict[str, int] = field(default_factory=dict)

    @property
    def data_bytes(self) -> int:
        return sum(layout.data_bytes for layout in self.layouts)

    @property
    def file_bytes(self) -> int:
        return sum(layout.file_bytes for layout in self.layouts)

    @property
    def tier(self) -> int:
        if self.gpu is not None:
            return pb.TIER_GPU
        if self.host_files is not None:
            return pb.TIER_HOST
        return pb.TIER_DISK

    def candidate(self, nbytes: int) -> Candidate:
        return Candidate(self.model_id, nbytes, self.predicted_value, self.last_used)


@dataclass(slots=True, kw_only=True)
class _LoadResult:
    disk_files: list[Path]
    layouts: list[SafetensorsLayout]
    disk_bytes: int
    host_files: list[Path] | None
    host_pinned: dict[Path, PinnedMapping]
    gpu: GpuResidency | None
    tier_message: str


@dataclass(slots=True)
class _Lease:
    model_id: ModelId
    pid: int


def _default_gpu_device(gpu: GpuMemory) -> torch.device:
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
        self._nvml = nvml if nvml is not None else PynvmlNvml()
        self._gpu_device = gpu_device if gpu_device is not None else _default_gpu_device
        self._wall = wall_clock
        self._mono = monotonic
        self._node = node_name or os.uname().nodename
        self._disk = DiskCache(Path(config.cache_dir))
        self._shm_root = Path(config.shm_dir)
        self._policy = SourcePolicy(
            config.allowed_schemes,
            file_roots=config.allowed_file_roots,
            http_prefixes=config.allowed_http_prefixes,
            require_sha256=config.require_sha256,
        )
        self._fetcher = Fetcher(
            http_session,
            parallel_ranges=config.http_parallel_ranges,
            range_bytes=config.http_range_bytes,
            timeout_s=config.http_timeout_s,
        )
        self._pool = StagingPool(config.chunk_bytes, workers=config.copy_workers)
        self._lock = threading.RLock()
        self._gpu_alloc_lock = threading.Lock()
        self._holdings: dict[ModelId, Holding] = {}
        self._leases: dict[str, _Lease] = {}
        self._loading: dict[ModelId, tuple[LoadControl, str]] = {}
        self._model_locks: dict[ModelId, asyncio.Lock] = {}
        self._subscribers: set[asyncio.Queue[pb.Event]] = set()
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # ----------------------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """Start clean after any exit, a SIGKILL mid-load included.

        Removes partial files and incomplete model directories from the disk tier and keeps the
        complete ones as disk-tier holdings; empties the host tier (its files belonged to the
        previous process, and processes that still map them keep their mappings after unlink).
        GPU memory of a dead process is freed by the driver.
        """
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._shm_root)
        self._shm_root.mkdir(parents=True, exist_ok=True)
        for manifest in self._disk.recover():
            model_id = ModelId(manifest.model_id)
            directory = self._disk.model_dir(model_id)
            paths = [directory / f.name for f in manifest.files]
            try:
                layouts = [read_layout(path) for path in paths]
            except DataLoss:
                self._disk.remove(model_id)
                continue
            self._holdings[model_id] = Holding(
                model_id=model_id,
                predicted_value=manifest.predicted_value,
                last_used=self._mono(),
                disk_files=paths,
                layouts=layouts,
                disk_bytes=sum(f.size_bytes for f in manifest.files),
            )

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that Watch subscribers live on (events from threads are posted to it)."""
        self._loop = loop

    def gpu_unavailable_reason(self) -> str | None:
        """Why GPU tiers are not served here, or ``None`` when they are."""
        return self._nvml.unavailable_reason()

    # ------------------------------------------------------------------------------- preload

    def validate_model_id(self, model_id: str) -> ModelId:
        """The id as a :class:`ModelId`; :class:`InvalidInput` if empty, too long or odd."""
        if not model_id:
            raise InvalidInput("model_id is empty")
        if len(model_id) > self.config.max_model_id_len:
            raise InvalidInput(
                f"model_id is {len(model_id)} characters; at most "
                f"{self.config.max_model_id_len} are allowed"
            )
        if not _MODEL_ID.match(model_id):
            raise InvalidInput(
                "model_id may contain only letters, digits and . _ : / @ + -; "
                f"got {model_id[:64]!r}"
            )
        return ModelId(model_id)

    def _check_spec(self, spec: PreloadSpec) -> list[CheckedSource]:
        self.validate_model_id(spec.model_id)
        if spec.target_tier not in TIER_NAMES:
            raise InvalidInput(f"target_tier {spec.target_tier} is not a known tier")
        if not math.isfinite(spec.predicted_value) or spec.predicted_value < 0:
            raise InvalidInput("predicted_value must be a finite number >= 0")
        if not spec.weights and spec.model_id not in self._holdings:
            raise InvalidInput(
                "a preload needs at least one weights source (only a model the agent already "
                "holds can be moved to another tier without them)"
            )
        checked = [self._policy.check(s.uri, s.sha256) for s in spec.weights]
        for source in checked:
            if Path(source.name).suffix.lower() in PICKLE_SUFFIXES and not (
                self.config.allow_pickle and spec.allow_pickle
            ):
                raise PermissionDenied(
                    f"{source.uri} is a pickle-based format; only safetensors are loaded unless "
                    "the agent's allow_pickle setting and the request's allow_pickle are both set"
                )
        for artifact in spec.artifacts:
            if artifact.kind not in (
                pb.ARTIFACT_KIND_MEGA_CACHE,
                pb.ARTIFACT_KIND_INDUCTOR_CACHE_TAR,
            ):
                raise InvalidInput(f"artifact kind {artifact.kind} is not a known kind")
            self._policy.check(artifact.source.uri, artifact.source.sha256)
            artifact_install.check_install_dir(
                artifact.install_dir, self.config.allowed_install_roots
            )
        return checked

    async def preload(
        self, spec: PreloadSpec, *, grpc_time_remaining_s: float | None = None
    ) -> AsyncIterator[pb.PreloadProgress]:
        """Bring ``spec.model_id`` up to ``spec.target_tier``, yielding progress; last is DONE.

        Validation errors are raised before anything is written. On any failure (deadline,
        checksum, corrupt file, no memory, cancellation by Evict or by the consumer closing the
        iterator) every file and allocation this call created is removed before the error
        propagates; tiers the model already held stay as they were.
        """
        checked = self._check_spec(spec)
        model_id = spec.model_id
        started = self._mono()
        deadline = self._deadline(spec, grpc_time_remaining_s)
        control = LoadControl(deadline, clock=self._mono)
        control.checkpoint()
        yield self._progress(model_id, Stage.STAGE_QUEUED, started=started)
        lock = self._model_locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            control.checkpoint()
            with self._lock:
                existing = self._holdings.get(model_id)
                if existing is not None and self._satisfies(existing, spec.target_tier):
                    existing.predicted_value = spec.predicted_value
                    existing.last_used = self._mono()
                    tier = existing.tier
                    existing = None
                    done = True
                else:
                    done = False
            if done:
                yield self._progress(
                    model_id, Stage.STAGE_DONE, started=started, tier=tier, message="already held"
                )
                return
            async for item in self._run_load(spec, checked, control=control, started=started):
                yield item

    async def _run_load(
        self,
        spec: PreloadSpec,
        checked: list[CheckedSource],
        *,
        control: LoadControl,
        started: float,
    ) -> AsyncIterator[pb.PreloadProgress]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[pb.PreloadProgress | None] = asyncio.Queue()

        def emit(item: pb.PreloadProgress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> _LoadResult:
            try:
                return self._load(spec, checked, control=control, emit=emit, started=started)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        self._loading[spec.model_id] = (control, "")
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
            self._publish(
                pb.Event.KIND_LOAD_FAILED, spec.model_id, reason=str(error) or type(error).__name__
            )
            raise
        finally:
            self._loading.pop(spec.model_id, None)
        holding = self._commit(spec, result)
        self._publish(
            pb.Event.KIND_LOADED,
            spec.model_id,
            tier=holding.tier,
            nbytes=holding.file_bytes,
            duration_s=self._mono() - started,
        )
        yield self._progress(
            spec.model_id,
            Stage.STAGE_DONE,
            started=started,
            done=holding.file_bytes,
            total=holding.file_bytes,
            tier=holding.tier,
            message=result.tier_message,
        )

    def _deadline(self, spec: PreloadSpec, grpc_remaining: float | None) -> float | None:
        candidates = []
        if spec.deadline_unix_s is not None:
            candidates.append(self._mono() + (spec.deadline_unix_s - self._wall()))
        if grpc_remaining is not None:
            candidates.append(self._mono() + grpc_remaining)
        return min(candidates) if candidates else None

    def _satisfies(self, holding: Holding, target: int) -> bool:
        if target == pb.TIER_GPU and self.gpu_unavailable_reason() is not None:
            target = pb.TIER_HOST
        return holding.tier >= target

    def _commit(self, spec: PreloadSpec, result: _LoadResult) -> Holding:
        with self._lock:
            holding = self._holdings.get(spec.model_id)
            if holding is None:
                holding = Holding(
                    model_id=spec.model_id,
                    predicted_value=spec.predicted_value,
                    last_used=self._mono(),
                    disk_files=result.disk_files,
                    layouts=result.layouts,
                    disk_bytes=result.disk_bytes,
                )
                self._holdings[spec.model_id] = holding
            holding.predicted_value = spec.predicted_value
            holding.last_used = self._mono()
            if result.host_files is not None:
                holding.host_files = result.host_files
                holding.host_pinned = result.host_pinned
            if result.gpu is not None:
                holding.gpu = result.gpu
            return holding

    def _progress(
        self,
        model_id: ModelId,
        stage: int,
        *,
        started: float,
        done: int = 0,
        total: int = 0,
        stage_started: float | None = None,
        tier: int = pb.TIER_UNSPECIFIED,
        message: str = "",
    ) -> pb.PreloadProgress:
        now = self._mono()
        span = now - (stage_started if stage_started is not None else started)
        return pb.PreloadProgress(
            model_id=model_id,
            stage=stage,  # type: ignore[arg-type]
            bytes_done=done,
            bytes_total=total,
            gbps=done / span / 1e9 if span > 0 and done else 0.0,
            tier=tier,  # type: ignore[arg-type]
            message=message,
            elapsed_s=now - started,
        )

    # ------------------------------------------------------------------ the load (in a thread)

    def _load(
        self,
        spec: PreloadSpec,
        checked: list[CheckedSource],
        *,
        control: LoadControl,
        emit: Callable[[pb.PreloadProgress], None],
        started: float,
    ) -> _LoadResult:
        model_id = spec.model_id
        created: list[Path] = []
        gpu: GpuResidency | None = None
        pinned: dict[Path, PinnedMapping] = {}
        try:
            with self._lock:
                existing = self._holdings.get(model_id)
                held_disk = list(existing.disk_files) if existing else None
                held_layouts = list(existing.layouts) if existing else None
                held_host = list(existing.host_files) if existing and existing.host_files else None
                held_pinned = dict(existing.host_pinned) if existing else {}
                disk_bytes = existing.disk_bytes if existing else 0
            if held_disk is None or held_layouts is None:
                if not checked:
                    raise NotFound(f"model {model_id} was evicted before this preload ran")
                self._check_capacity_early(spec, checked)
                held_disk, held_layouts, disk_bytes = self._fetch_to_disk(
                    spec, checked, control=control, emit=emit, started=started, created=created
                )
            self._install_artifacts(spec, control=control, emit=emit, started=started)
            target = spec.target_tier
            message = ""
            if target == pb.TIER_GPU and (reason := self.gpu_unavailable_reason()) is not None:
                target = pb.TIER_HOST
                message = f"no GPU on this node ({reason}): kept in host memory"
            host_files = None
            if target == pb.TIER_HOST and held_host is None:
                host_files = self._to_host(
                    model_id,
                    value=spec.predicted_value,
                    disk_files=held_disk,
                    layouts=held_layouts,
                    control=control,
                    emit=emit,
                    started=started,
                    created=created,
                )
                pinned = self._pin_host(host_files)
            if target == pb.TIER_GPU:
                sources = held_host if held_host is not None else held_disk
                gpu = self._to_gpu(
                    spec,
                    sources,
                    layouts=held_layouts,
                    control=control,
                    emit=emit,
                    started=started,
                    pinned=held_pinned,
                )
            return _LoadResult(
                disk_files=held_disk,
                layouts=held_layouts,
                disk_bytes=disk_bytes,
                host_files=host_files,
                host_pinned=pinned,
                gpu=gpu,
                tier_message=message,
            )
        except BaseException:
            gpu = None
            for mapping in pinned.values():
                mapping.close()
            for path in reversed(created):
                remove_tree(path)
            self._release_cuda_cache()
            raise

    def _check_capacity_early(self, spec: PreloadSpec, checked: list[CheckedSource]) -> None:
        """Refuse at once a model that can never fit, before fetching anything."""
        size = sum(s.path.stat().st_size for s in checked if s.path is not None)
        if size == 0:
            return
        if size > self._disk.free_bytes() - self.config.disk_headroom_bytes:
            raise ResourceExhausted(
                f"model needs {size} bytes of disk; the cache has less free beyond its headroom"
            )
        if spec.target_tier == pb.TIER_GPU and self.gpu_unavailable_reason() is None:
            largest = max((g.total_bytes for g in self._nvml.gpus()), default=0)
            if size > largest - self.config.headroom_bytes:
                raise ResourceExhausted(
                    f"model needs {size} bytes of GPU memory; the largest GPU here holds "
                    f"{largest} minus {self.config.headroom_bytes} headroom"
                )

    def _fetch_to_disk(
        self,
        spec: PreloadSpec,
        checked: list[CheckedSource],
        *,
        control: LoadControl,
        emit: Callable[[pb.PreloadProgress], None],
        started: float,
        created: list[Path],
    ) -> tuple[list[Path], list[SafetensorsLayout], int]:
        model_id = spec.model_id
        directory = self._disk.model_dir(model_id)
        if not directory.exists():
            created.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        total = sum(s.path.stat().st_size for s in checked if s.path is not None)
        reporter = _Reporter(
            self, model_id, stage=Stage.STAGE_FETCHING, total=total, emit=emit, started=started
        )
        paths: list[Path] = []
        files: list[CachedFile] = []
        for index, source in enumerate(checked):
            name = f"{index:03d}-" + re.sub(r"[^A-Za-z0-9._-]", "_", source.name)
            dest = directory / name
            created.append(dest)
            size, digest = self._fetcher.fetch(source, dest, control=control, progress=reporter.add)
            if Path(name).suffix.lower() in PICKLE_SUFFIXES:
                dest, size, digest = self._convert_pickle(dest, created)
                name = dest.name
            paths.append(dest)
            files.append(CachedFile(name=name, sha256=digest, size_bytes=size))
        reporter.finish()
        control.checkpoint()
        emit(self._progress(model_id, Stage.STAGE_VERIFYING, started=started, tier=pb.TIER_DISK))
        layouts = [read_layout(path) for path in paths]
        self._disk.write_manifest(
            model_id,
            Manifest(model_id=model_id, files=files, predicted_value=spec.predicted_value),
        )
        return paths, layouts, sum(f.size_bytes for f in files)

    @staticmethod
    def _convert_pickle(path: Path, created: list[Path]) -> tuple[Path, int, str]:
        """Load a pickle checkpoint with ``weights_only=True`` and store it as safetensors."""
        try:
            # weights_only=True: the unpickler accepts only tensors and plain containers, so a
            # checkpoint cannot run code; anything else is refused as corrupt.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise DataLoss(f"{path.name}: not a weights-only torch checkpoint: {error}") from error
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise DataLoss(f"{path.name}: checkpoint is not a flat dict of tensors")
        target = path.with_suffix(".safetensors")
        created.append(target)
        safetensors.torch.save_file(
            {k: v.detach().contiguous().clone() for k, v in state.items()}, str(target)
        )
        path.unlink()
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        return target, target.stat().st_size, digest

    def _install_artifacts(
        self,
        spec: PreloadSpec,
        *,
        control: LoadControl,
        emit: Callable[[pb.PreloadProgress], None],
        started: float,
    ) -> None:
        if not spec.artifacts:
            return
        scratch = self._disk.root / "artifacts-scratch" / model_key(spec.model_id)
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            for index, artifact in enumerate(spec.artifacts):
                source = self._policy.check(artifact.source.uri, artifact.source.sha256)
                blob = scratch / f"{index:03d}-{source.name}"
                self._fetcher.fetch(source, blob, control=control, progress=lambda _n: None)
                control.checkpoint()
                target = artifact_install.check_install_dir(
                    artifact.install_dir, self.config.allowed_install_roots
                )
                if artifact.kind == pb.ARTIFACT_KIND_MEGA_CACHE:
                    artifact_install.install_mega_cache(blob, target, model_id=spec.model_id)
                else:
                    artifact_install.install_cache_tar(blob, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        emit(self._progress(spec.model_id, Stage.STAGE_ARTIFACTS, started=started))

    def _to_host(
        self,
        model_id: ModelId,
        *,
        value: float,
        disk_files: list[Path],
        layouts: list[SafetensorsLayout],
        control: LoadControl,
        emit: Callable[[pb.PreloadProgress], None],
        started: float,
        created: list[Path],
    ) -> list[Path]:
        need = sum(layout.file_bytes for layout in layouts)
        self._make_host_room(model_id, need, value=value)
        directory = self._shm_root / model_key(model_id)
        created.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        reporter = _Reporter(
            self, model_id, stage=Stage.STAGE_HOST, total=need, emit=emit, started=started
        )
        paths = []
        for path in disk_files:
            dest = directory / path.name
            copy_with_progress(path, dest, control=control, progress=reporter.add)
            paths.append(dest)
        reporter.finish(tier=pb.TIER_HOST)
        return paths

    def _pin_host(self, paths: list[Path]) -> dict[Path, PinnedMapping]:
        """Page-lock host-tier files so later GPU fills DMA from them (``host_fill=registered``)."""
        if (
            self.config.host_fill != "registered"
            or self.gpu_unavailable_reason() is not None
            or not torch.cuda.is_available()
        ):
            return {}
        pinned: dict[Path, PinnedMapping] = {}
        try:
            for path in paths:
                pinned[path] = PinnedMapping(path)
        except RuntimeError:
            # Page-locking can fail: RLIMIT_MEMLOCK, or shm_dir not on tmpfs (Linux >= 6.5
            # refuses long-term write pins of file-backed pages outside shmem). The model stays
            # in host memory and its GPU fills copy through the pinned staging buffers instead.
            for mapping in pinned.values():
                mapping.close()
            return {}
        return pinned

    def _host_free_bytes(self) -> int:
        stats = os.statvfs(self._shm_root)
        return stats.f_bavail * stats.f_frsize - self.config.host_headroom_bytes

    def _make_host_room(self, model_id: ModelId, need: int, *, value: float) -> None:
        with self._lock:
            free = self._host_free_bytes()
            candidates = [
                h.candidate(h.file_bytes)
                for h in self._holdings.values()
                if h.host_files is not None and not h.leases and h.model_id not in self._loading
            ]
            newcomer = Candidate(model_id, need, value, self._mono())
            victims = admit(candidates, newcomer, free_bytes=free)
            if victims is None:
                raise ResourceExhausted(
                    f"model needs {need} bytes of host shared memory; {max(free, 0)} are free "
                    "beyond the headroom and evicting cheaper models would not make enough room"
                )
            for victim in victims:
                self._drop_host(victim.model_id, reason="host memory needed for a preload")

    def _to_gpu(
        self,
        spec: PreloadSpec,
        sources: list[Path],
        *,
        layouts: list[SafetensorsLayout],
        control: LoadControl,
        emit: Callable[[pb.PreloadProgress], None],
        started: float,
        pinned: dict[Path, PinnedMapping],
    ) -> GpuResidency:
        nbytes, placements = plan_placements(layouts, sources)
        with self._gpu_alloc_lock:
            gpu = self._choose_gpu(spec.gpu_uuid)
            device = self._gpu_device(gpu)
            free = gpu.free_bytes - self.config.headroom_bytes
            with self._lock:
                candidates = [
                    h.candidate(h.gpu.nbytes)
                    for h in self._holdings.values()
                    if h.gpu is not None
                    and h.gpu.gpu_uuid == gpu.uuid
                    and not h.leases
                    and h.model_id not in self._loading
                ]
            newcomer = Candidate(spec.model_id, nbytes, spec.predicted_value, self._mono())
            victims = admit(candidates, newcomer, free_bytes=free)
            if victims is None:
                raise ResourceExhausted(
                    f"model needs {nbytes} bytes of GPU memory on {gpu.uuid}; {max(free, 0)} are "
                    f"free beyond the {self.config.headroom_bytes}-byte headroom and evicting "
                    "models worth less per byte would not make enough room"
                )
            for victim in victims:
                self._drop_gpu(victim.model_id, reason="GPU memory needed for a preload")
            control.checkpoint()
            try:
                # One allocation per model: the tensors are views into it, so eviction returns
                # one contiguous block and fragmentation stays bounded.
                buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
            except torch.OutOfMemoryError as error:
                raise ResourceExhausted(
                    f"GPU {gpu.uuid} refused {nbytes} bytes: {error}"
                ) from error
        reporter = _Reporter(
            self, spec.model_id, stage=Stage.STAGE_GPU, total=nbytes, emit=emit, started=started
        )
        from_host = all(path.is_relative_to(self._shm_root) for path in sources)
        try:
            if pinned and from_host and buffer.is_cuda and self.config.host_fill == "registered":
                fill_registered(buffer, placements, pool=self._pool, control=control,
                                progress=reporter.add, mappings=pinned)  # fmt: skip
            else:
                fill(buffer, placements, pool=self._pool, control=control, progress=reporter.add)
        except BaseException:
            del buffer
            raise
        reporter.finish(tier=pb.TIER_GPU)
        return GpuResidency(buffer=buffer, placements=placements, gpu_uuid=gpu.uuid, nbytes=nbytes)

    def _choose_gpu(self, wanted_uuid: str) -> GpuMemory:
        gpus = self._nvml.gpus()
        if wanted_uuid:
            for gpu in gpus:
                if gpu.uuid == wanted_uuid:
                    return gpu
            raise NotFound(f"no GPU with uuid {wanted_uuid} on this node")
        if not gpus:
            raise ResourceExhausted("NVML reports no GPU on this node")
        return max(gpus, key=lambda g: g.free_bytes)

    # ------------------------------------------------------------------------------ eviction

    def _drop_gpu(self, model_id: ModelId, *, reason: str, duration_s: float = 0.0) -> int:
        with self._lock:
            holding = self._holdings.get(model_id)
            if holding is None or holding.gpu is None:
                return 0
            freed = holding.gpu.nbytes
            holding.gpu = None
        self._release_cuda_cache()
        self._publish(pb.Event.KIND_EVICTED, model_id, tier=pb.TIER_GPU, nbytes=freed,
                      reason=reason, duration_s=duration_s)  # fmt: skip
        return freed

    def _drop_host(self, model_id: ModelId, *, reason: str) -> int:
        with self._lock:
            holding = self._holdings.get(model_id)
            if holding is None or holding.host_files is None:
                return 0
            holding.host_files = None
            pinned, holding.host_pinned = holding.host_pinned, {}
        for mapping in pinned.values():
            mapping.close()
        freed = remove_tree(self._shm_root / model_key(model_id))
        self._publish(pb.Event.KIND_EVICTED, model_id, tier=pb.TIER_HOST, nbytes=freed,
                      reason=reason)  # fmt: skip
        return freed

    def _release_cuda_cache(self) -> None:
        # torch's caching allocator keeps freed blocks reserved; without empty_cache() NVML (and
        # so every other process) still sees the memory as used. Blocks shared over CUDA IPC are
        # only released once every importing process has dropped them.
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            # Blocks a released lease no longer references sit in torch's IPC "limbo" until
            # collected; collect them first so empty_cache can return them too.
            torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]
            torch.cuda.empty_cache()

    async def evict(
        self, model_id: str, *, tier: int = pb.TIER_UNSPECIFIED, force: bool = False
    ) -> pb.EvictResponse:
        """Drop ``model_id`` from ``tier`` (all tiers when unspecified).

        A load in flight for the model is cancelled first (that Preload fails with
        FAILED_PRECONDITION and leaves nothing behind). :class:`NotFound` when the model is
        neither held nor loading; :class:`FailedPrecondition` when it is attached and not
        ``force``.
        """
        mid = self.validate_model_id(model_id)
        if tier not in (pb.TIER_UNSPECIFIED, *TIER_NAMES):
            raise InvalidInput(f"tier {tier} is not a known tier")
        loading = self._loading.get(mid)
        if loading is not None:
            loading[0].cancel("evicted while loading; preload again if it is still wanted")
        async with self._model_locks.setdefault(mid, asyncio.Lock()):
            with self._lock:
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
            return await asyncio.to_thread(self._evict_sync, mid, tier)

    def _evict_sync(self, model_id: ModelId, tier: int) -> pb.EvictResponse:
        freed = 0
        tiers = []
        everything = tier == pb.TIER_UNSPECIFIED
        if everything or tier == pb.TIER_GPU:
            n = self._drop_gpu(model_id, reason="Evict")
            freed += n
            if n or tier == pb.TIER_GPU:
                tiers.append(pb.TIER_GPU)
        if everything or tier == pb.TIER_HOST:
            n = self._drop_host(model_id, reason="Evict")
            freed += n
            if n or tier == pb.TIER_HOST:
                tiers.append(pb.TIER_HOST)
        if everything or tier == pb.TIER_DISK:
            with self._lock:
                holding = self._holdings.pop(model_id, None)
                if holding is not None and not everything:
                    # Without its disk files a model cannot be refilled; drop it entirely.
                    self._drop_in_memory(holding)
            n = self._disk.remove(model_id)
            freed += n
            tiers.append(pb.TIER_DISK)
            self._publish(pb.Event.KIND_EVICTED, model_id, tier=pb.TIER_DISK, nbytes=n,
                          reason="Evict")  # fmt: skip
        return pb.EvictResponse(model_id=model_id, bytes_freed=freed, tiers=tiers)

    def _drop_in_memory(self, holding: Holding) -> None:
        holding.gpu = None
        if holding.host_files is not None:
            holding.host_files = None
            for mapping in holding.host_pinned.values():
                mapping.close()
            holding.host_pinned = {}
            remove_tree(self._shm_root / model_key(holding.model_id))
        self._release_cuda_cache()

    def relieve_pressure(self) -> int:
        """Evict GPU-tier models, lowest value density first, where free < headroom.

        Returns the bytes freed. Called by :meth:`watch_pressure` every poll interval and usable
        directly (benchmarks). Attached models and models being loaded are not candidates; if
        evicting every candidate is not enough, loads in flight on that GPU are cancelled too.
        """
        started = self._mono()
        freed_total = 0
        for gpu in self._nvml.gpus():
            deficit = self.config.headroom_bytes - gpu.free_bytes
            if deficit <= 0:
                continue
            self._publish(pb.Event.KIND_PRESSURE, ModelId(""), nbytes=deficit,
                          reason=f"GPU {gpu.uuid}: free {gpu.free_bytes} < headroom")  # fmt: skip
            with self._lock:
                candidates = [
                    h.candidate(h.gpu.nbytes)
                    for h in self._holdings.values()
                    if h.gpu is not None
                    and h.gpu.gpu_uuid == gpu.uuid
                    and not h.leases
                    and h.model_id not in self._loading
                ]
            victims = choose_victims(candidates, deficit)
            freed = 0
            for victim in victims:
                freed += self._drop_gpu(
                    victim.model_id,
                    reason="memory pressure from other processes",
                    duration_s=self._mono() - started,
                )
            if freed < deficit:
                for control, _ in list(self._loading.values()):
                    control.cancel("memory pressure from other processes")
            freed_total += freed
        return freed_total

    async def watch_pressure(self, stop: asyncio.Event) -> None:
        """Poll NVML every ``pressure_poll_interval_s`` and relieve pressure until ``stop``."""
        if self.gpu_unavailable_reason() is not None:
            return
        while not stop.is_set():
            await asyncio.to_thread(self.relieve_pressure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.pressure_poll_interval_s)

    # -------------------------------------------------------------------------------- status

    def gpu_bytes_held(self, gpu_uuid: str | None = None) -> int:
        """Bytes of GPU memory held by this agent's models (on one GPU, or all)."""
        with self._lock:
            return sum(
                h.gpu.nbytes
                for h in self._holdings.values()
                if h.gpu is not None and (gpu_uuid is None or h.gpu.gpu_uuid == gpu_uuid)
            )

    def status(self) -> pb.StatusResponse:
        """GPUs, tier usage and holdings now."""
        reason = self.gpu_unavailable_reason()
        response = pb.StatusResponse(node=self._node, gpu_available=reason is None)
        if reason is not None:
            response.gpu_unavailable_reason = reason
        for gpu in self._nvml.gpus():
            ours = self.gpu_bytes_held(gpu.uuid)
            estimate = max(gpu.used_bytes - ours, 0)
            others = (
                estimate
                if gpu.other_processes_bytes is None
                else min(gpu.other_processes_bytes, estimate)
            )
            response.gpus.append(
                pb.GpuStatus(
                    uuid=gpu.uuid,
                    index=gpu.index,
                    name=gpu.name,
                    total_bytes=gpu.total_bytes,
                    used_bytes=gpu.used_bytes,
                    free_bytes=gpu.free_bytes,
                    other_processes_bytes=others,
                    ours_bytes=ours,
                    headroom_bytes=self.config.headroom_bytes,
                )
            )
        usage = {t: [0, 0] for t in TIER_NAMES}
        with self._lock:
            for holding in self._holdings.values():
                tiers = [(pb.TIER_DISK, holding.disk_bytes)]
                if holding.host_files is not None:
                    tiers.append((pb.TIER_HOST, holding.file_bytes))
                if holding.gpu is not None:
                    tiers.append((pb.TIER_GPU, holding.gpu.nbytes))
                for tier, nbytes in tiers:
                    usage[tier][0] += nbytes
                    usage[tier][1] += 1
                top = tiers[-1][1]
                response.models.append(
                    pb.ModelHolding(
                        model_id=holding.model_id,
                        tier=holding.tier,  # type: ignore[arg-type]
                        bytes=top,
                        predicted_value=holding.predicted_value,
                        value_density=holding.candidate(top).density,
                        last_used=self._timestamp(
                            self._wall() - (self._mono() - holding.last_used)
                        ),
                        attached=len(holding.leases),
                        gpu_uuid=holding.gpu.gpu_uuid if holding.gpu else "",
                    )
                )
        capacity: dict[int, int] = {
            pb.TIER_DISK: self._disk.free_bytes() - self.config.disk_headroom_bytes,
            pb.TIER_HOST: self._host_free_bytes(),
            pb.TIER_GPU: sum(
                max(g.free_bytes - self.config.headroom_bytes, 0) for g in self._nvml.gpus()
            ),
        }
        for tier_value, (used, count) in usage.items():
            response.tiers.append(
                pb.TierUsage(
                    tier=tier_value,  # type: ignore[arg-type]
                    used_bytes=used,
                    capacity_bytes=used + max(capacity[tier_value], 0),
                    models=count,
                )
            )
        return response

    # ------------------------------------------------------------------------------- hand-off

    def attach(self, model_id: str, *, max_tier: int, client_pid: int) -> pb.AttachResponse:
        """Open a lease on a held model and describe how to map it without copying.

        GPU tier: a CUDA IPC handle of the model's one allocation (only when it lives on a CUDA
        device). Host tier: the shared-memory files to mmap. Disk tier: the cached files, which
        the client loads normally. :class:`NotFound` if the model is not held.
        """
        mid = self.validate_model_id(model_id)
        limit = max_tier or pb.TIER_GPU
        with self._lock:
            holding = self._holdings.get(mid)
            if holding is None:
                raise NotFound(f"model {mid} is not held by this agent; preload it first")
            lease_id = uuid.uuid4().hex
            response = pb.AttachResponse(model_id=mid, lease_id=lease_id)
            gpu = holding.gpu
            if limit >= pb.TIER_GPU and gpu is not None and gpu.buffer.is_cuda:
                response.tier = pb.TIER_GPU
                response.cuda.CopyFrom(_ipc_handle(gpu))
                layouts = [p.layout for p in gpu.placements]
                shifts = [p.base - p.layout.data_start for p in gpu.placements]
                self._add_tensors(response, layouts, shifts=shifts)
            else:
                use_host = limit >= pb.TIER_HOST and holding.host_files is not None
                files = holding.disk_files
                if use_host and holding.host_files is not None:
                    files = holding.host_files
                response.tier = pb.TIER_HOST if use_host else pb.TIER_DISK
                for path in files:
                    response.files.append(
                        pb.HostFile(path=str(path), size_bytes=path.stat().st_size)
                    )
                self._add_tensors(response, holding.layouts, shifts=[0] * len(holding.layouts))
            holding.leases[lease_id] = client_pid
            holding.last_used = self._mono()
            self._leases[lease_id] = _Lease(mid, client_pid)
        self._publish(pb.Event.KIND_ATTACHED, mid, tier=response.tier, reason=f"pid {client_pid}")
        return response

    @staticmethod
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

    def release(self, lease_id: str) -> None:
        """End a lease; :class:`NotFound` if it does not exist (already released)."""
        with self._lock:
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                raise NotFound(f"lease {lease_id[:64]!r} does not exist (already released?)")
            holding = self._holdings.get(lease.model_id)
            if holding is not None:
                holding.leases.pop(lease_id, None)
            evicted_while_attached = holding is None or holding.gpu is None
        if evicted_while_attached:
            self._release_cuda_cache()
        self._publish(pb.Event.KIND_RELEASED, lease.model_id, reason=f"pid {lease.pid}")

    # -------------------------------------------------------------------------------- events

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(kind, model_id, tier, nbytes, reason, duration_s)`` for every event,
        synchronously in the publishing thread (metrics use this; keep listeners cheap)."""
        self._listeners.append(listener)

    async def events(self, model_ids: Sequence[str] = ()) -> AsyncIterator[pb.Event]:
        """Events from now on (optionally only for ``model_ids``) until the consumer stops."""
        queue: asyncio.Queue[pb.Event] = asyncio.Queue(maxsize=10_000)
        wanted = set(model_ids)
        self._subscribers.add(queue)
        try:
            while True:
                event = await queue.get()
                if not wanted or event.model_id in wanted:
                    yield event
        finally:
            self._subscribers.discard(queue)

    def _publish(
        self,
        kind: int,
        model_id: ModelId,
        *,
        tier: int = pb.TIER_UNSPECIFIED,
        nbytes: int = 0,
        reason: str = "",
        duration_s: float = 0.0,
    ) -> None:
        for listener in self._listeners:
            listener(kind, model_id, tier, nbytes, reason, duration_s)
        if kind in (pb.Event.KIND_LOADED, pb.Event.KIND_EVICTED, pb.Event.KIND_LOAD_FAILED):
            log.info(
                "gpu agent event",
                extra={
                    "event": pb.Event.Kind.Name(kind),  # type: ignore[arg-type]
                    "model": model_id,
                    "tier": TIER_NAMES.get(tier, ""),
                    "bytes": nbytes,
                    "reason": reason,
                    "duration_s": round(duration_s, 4),
                },
            )
        else:
            name = pb.Event.Kind.Name(kind)  # type: ignore[arg-type]
            log.debug("gpu agent event %s %s %s", name, model_id, reason)
        loop = self._loop
        if loop is None or not self._subscribers:
            return
        event = pb.Event(
            kind=kind,  # type: ignore[arg-type]
            model_id=model_id,
            tier=tier,  # type: ignore[arg-type]
            bytes=nbytes,
            reason=reason,
            time=self._timestamp(self._wall()),
            duration_s=duration_s,
        )

        def deliver() -> None:
            for queue in list(self._subscribers):
                # A subscriber that stopped reading loses events rather than stalling the agent.
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(event)

        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            deliver()
        else:
            loop.call_soon_threadsafe(deliver)

    @staticmethod
    def _timestamp(unix_s: float) -> Timestamp:
        stamp = Timestamp()
        stamp.FromNanoseconds(int(unix_s * 1e9))
        return stamp


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


class _Reporter:
    """Counts bytes of one stage from worker threads and emits throttled progress."""

    def __init__(
        self,
        agent: Agent,
        model_id: ModelId,
        *,
        stage: int,
        total: int,
        emit: Callable[[pb.PreloadProgress], None],
        started: float,
    ) -> None:
        self._agent = agent
        self._model_id = model_id
        self._stage = stage
        self._total = total
        self._emit = emit
        self._started = started
        self._stage_started = agent._mono()
        self._done = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
            now = self._agent._mono()
            if now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
            done = self._done
        self._send(done)

    def finish(self, *, tier: int = pb.TIER_DISK) -> None:
        self._send(self._done, tier=tier)

    def _send(self, done: int, *, tier: int = pb.TIER_UNSPECIFIED) -> None:
        self._emit(
            self._agent._progress(
                self._model_id,
                self._stage,
                started=self._started,
                done=done,
                total=max(self._total, done),
                stage_started=self._stage_started,
                tier=tier,
            )
        )
