"""The registry of what the agent holds: per model, its files and allocations in each tier.

Owns :class:`Holding` (a model's disk files, host shared-memory files and page-locked mappings,
GPU allocation and open leases), the lock every read-modify-write of a holding takes, the loads in
flight, the retired versions (a model's older weights that leases still hold after a newer version
replaced them: kept, never offered, freed when their last lease ends), and the views other
modules decide from (eviction candidates per tier, GPU bytes held).
It must not do I/O, free memory or decide what to evict: the tier modules and
:mod:`gpu_agent.reclaim` do, under :attr:`Holdings.lock`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.ids import ModelId
from common.tiers import Tier
from gpu_agent.control import LoadControl
from gpu_agent.copy_engine import PinnedMapping, Placement
from gpu_agent.eviction import Candidate
from gpu_agent.model_dir import TreeFile
from gpu_agent.safetensors_format import SafetensorsLayout


@dataclass(slots=True)
class GpuResidency:
    """A model's one allocation on one GPU and where each file's data lies in it."""

    buffer: torch.Tensor
    placements: list[Placement]
    gpu_uuid: str
    nbytes: int


@dataclass(frozen=True, slots=True)
class LoadRecord:
    """The latest load that moved a model up the tiers, as Status reports it.

    ``source`` is the tier the load started from (``REMOTE``: fetched from its source), ``target``
    the tier it reached. ``finished_unix_s`` is wall-clock time, read once at commit: Status
    reports the same instant every time, so a reader can tell one load from the next by it.
    """

    duration_s: float
    finished_unix_s: float
    source: Tier
    target: Tier
    nbytes: int


@dataclass(slots=True)
class Holding:
    """Everything the agent holds for one model. Mutated only under :attr:`Holdings.lock`."""

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
    """Open leases: lease id -> the attached client's pid."""
    last_load: LoadRecord | None = None
    """The latest load that moved the model up (None: none since the agent started)."""
    revision: str = ""
    """The version's name: a directory model's revision, a single-file model's digest prefix
    (:mod:`gpu_agent.versions`); empty for a model cached before versions were recorded."""
    digest: str = ""
    """:func:`gpu_agent.versions.weights_digest` of the weights it was loaded from (empty: not
    recorded)."""
    tree: tuple[TreeFile, ...] = ()
    """A directory model's every file in the disk tier (its weights are also ``disk_files``)."""
    host_dir: Path | None = None
    """A directory model's read-only revision directory in the host tier, while it is there
    (``host_files`` are its safetensors files)."""

    @property
    def is_directory(self) -> bool:
        return bool(self.tree)

    @property
    def data_bytes(self) -> int:
        return sum(layout.data_bytes for layout in self.layouts)

    @property
    def extra_bytes(self) -> int:
        """A directory model's files that are not weights (config, tokenizer, index, ...)."""
        return sum(t.size_bytes for t in self.tree if not t.is_weights)

    @property
    def file_bytes(self) -> int:
        return sum(layout.file_bytes for layout in self.layouts) + self.extra_bytes

    @property
    def tier(self) -> Tier:
        """The fastest tier the model is held in."""
        if self.gpu is not None:
            return Tier.GPU
        if self.host_files is not None:
            return Tier.HOST
        return Tier.DISK

    def candidate(self, nbytes: int) -> Candidate:
        return Candidate(self.model_id, nbytes, self.predicted_value, self.last_used)


class Holdings:
    """The agent's holdings by model id, and its loads in flight.

    Loads in flight are registered and removed on the event loop and read from worker threads
    without the lock (single dict operations), so the event loop never waits on a worker that
    holds :attr:`lock` while it frees memory.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        """Taken by every read-modify-write of a holding (re-entrant: eviction nests in it)."""
        self._by_id: dict[ModelId, Holding] = {}
        self._loading: dict[ModelId, LoadControl] = {}
        self._retired: dict[ModelId, list[Holding]] = {}

    def get(self, model_id: ModelId) -> Holding | None:
        return self._by_id.get(model_id)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def put(self, holding: Holding) -> None:
        self._by_id[holding.model_id] = holding

    def pop(self, model_id: ModelId) -> Holding | None:
        return self._by_id.pop(model_id, None)

    def all(self) -> list[Holding]:
        """The holdings now, in the order they were added."""
        with self.lock:
            return list(self._by_id.values())

    # ---------------------------------------------------------------------- retired versions

    def retire(self, holding: Holding) -> None:
        """Keep ``holding`` (no longer the model's current version) until its leases end."""
        with self.lock:
            self._retired.setdefault(holding.model_id, []).append(holding)

    def retired(self, model_id: ModelId | None = None) -> list[Holding]:
        """The retired versions (of one model, or all)."""
        with self.lock:
            if model_id is not None:
                return list(self._retired.get(model_id, ()))
            return [h for versions in self._retired.values() for h in versions]

    def take_retired(
        self, model_id: ModelId, *, revision: str | None = None, unleased: bool = False
    ) -> list[Holding]:
        """Remove and return ``model_id``'s retired versions (only ``revision``'s; only those no
        lease holds any more)."""
        with self.lock:
            versions = self._retired.get(model_id, [])
            taken = [
                h
                for h in versions
                if (revision is None or h.revision == revision) and not (unleased and h.leases)
            ]
            kept = [h for h in versions if all(h is not t for t in taken)]
            if kept:
                self._retired[model_id] = kept
            else:
                self._retired.pop(model_id, None)
            return taken

    def retired_unleased(self) -> list[ModelId]:
        """The models with a retired version that no lease holds any more."""
        with self.lock:
            return [m for m, hs in self._retired.items() if any(not h.leases for h in hs)]

    # --------------------------------------------------------------------------- in flight

    def start_load(self, model_id: ModelId, control: LoadControl) -> None:
        self._loading[model_id] = control

    def end_load(self, model_id: ModelId) -> None:
        self._loading.pop(model_id, None)

    def load_control(self, model_id: ModelId) -> LoadControl | None:
        """The control of the load of ``model_id`` in flight, if any."""
        return self._loading.get(model_id)

    def loading(self) -> frozenset[ModelId]:
        """The models with a load in flight."""
        return frozenset(self._loading)

    def cancel_loads(self, reason: str) -> None:
        """Ask every load in flight to stop at its next checkpoint."""
        for control in list(self._loading.values()):
            control.cancel(reason)

    # ------------------------------------------------------------------------------- views

    def gpu_candidates(self, gpu_uuid: str) -> list[Candidate]:
        """Models on GPU ``gpu_uuid`` that may be evicted: not attached, not being loaded."""
        with self.lock:
            return [
                h.candidate(h.gpu.nbytes)
                for h in self._by_id.values()
                if h.gpu is not None
                and h.gpu.gpu_uuid == gpu_uuid
                and not h.leases
                and h.model_id not in self._loading
            ]

    def host_candidates(self) -> list[Candidate]:
        """Models in host memory that may be evicted: not attached, not being loaded."""
        with self.lock:
            return [
                h.candidate(h.file_bytes)
                for h in self._by_id.values()
                if h.host_files is not None and not h.leases and h.model_id not in self._loading
            ]

    def gpu_bytes(self, gpu_uuid: str | None = None) -> int:
        """Bytes of GPU memory held (on one GPU, or all), retired versions included."""
        with self.lock:
            every = [*self._by_id.values(), *self.retired()]
            return sum(
                h.gpu.nbytes
                for h in every
                if h.gpu is not None and (gpu_uuid is None or h.gpu.gpu_uuid == gpu_uuid)
            )
