"""Fetching a preload's files: weights into the disk tier, compiled artifacts to their install dirs.

Owns the naming of a model's cached files, the fetch of each weights source (through
:class:`gpu_agent.sources.Fetcher`), the conversion of allowed pickle checkpoints, the layout check
of every safetensors file and the manifest that marks the model complete (a directory model's files
keep their paths under ``tree/``; only its ``.safetensors`` files are read as weights, the others
are cached as they are); and the fetch-then-install of its
compiled artifacts through a scratch directory. Every file it creates is appended to the caller's
``created`` list first, so a failed load removes it. It must not decide tiers or touch the
registry of holdings.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ResourceExhausted
from common.tiers import Tier
from gpu_agent import artifacts as artifact_install
from gpu_agent.checkpoints import convert_pickle, is_pickle
from gpu_agent.control import LoadControl
from gpu_agent.diskcache import TREE, CachedFile, DiskCache, Manifest, model_key
from gpu_agent.model_dir import WEIGHT_SUFFIX, TreeFile
from gpu_agent.progress import Emit, LoadProgress, Stage
from gpu_agent.safetensors_format import SafetensorsLayout, read_layout
from gpu_agent.sources import CheckedSource, Fetcher, SourcePolicy
from gpu_agent.specs import ArtifactSpec, CheckedWeights, PreloadSpec
from gpu_agent.versions import weights_digest
from protos import gpu_agent_pb2 as pb


@dataclass(frozen=True, slots=True)
class DiskCopy:
    """A model's complete files in the disk tier: ``files`` (aligned with ``layouts``) are the
    safetensors weights; a directory model's every file is in ``tree``; the version is
    ``revision``, from weights whose :func:`gpu_agent.versions.weights_digest` is ``digest``."""

    files: list[Path]
    layouts: list[SafetensorsLayout]
    nbytes: int
    tree: tuple[TreeFile, ...] = ()
    revision: str = ""
    digest: str = ""


def source_bytes(checked: Sequence[CheckedSource]) -> int:
    """The size of the file:// sources (http(s) sizes are known only once fetched)."""
    return sum(s.path.stat().st_size for s in checked if s.path is not None)


class ModelFetcher:
    """Fetches into ``disk``, keeping ``headroom_bytes`` of it free."""

    def __init__(
        self,
        disk: DiskCache,
        fetcher: Fetcher,
        policy: SourcePolicy,
        *,
        headroom_bytes: int,
        allowed_install_roots: Sequence[str],
    ) -> None:
        self._disk = disk
        self._fetcher = fetcher
        self._policy = policy
        self._headroom = headroom_bytes
        self._install_roots = allowed_install_roots

    def free_bytes(self) -> int:
        """Free disk beyond the headroom (negative when the headroom is already eaten into)."""
        return self._disk.free_bytes() - self._headroom

    def check_room(self, nbytes: int) -> None:
        """:class:`ResourceExhausted` when ``nbytes`` more would eat into the disk headroom."""
        if nbytes > self.free_bytes():
            raise ResourceExhausted(
                f"model needs {nbytes} bytes of disk; the cache has less free beyond its headroom"
            )

    def fetch(
        self,
        spec: PreloadSpec,
        weights: CheckedWeights,
        *,
        control: LoadControl,
        progress: LoadProgress,
        emit: Emit,
        created: list[Path],
    ) -> DiskCopy:
        """Fetch, verify and convert every weights source; write the manifest last."""
        if weights.is_directory:
            return self._fetch_tree(spec, weights, control=control, progress=progress, emit=emit,
                                    created=created)  # fmt: skip
        checked = weights.sources
        model_id = spec.model_id
        directory = self._disk.model_dir(model_id, weights.revision)
        if not directory.exists():
            created.append(directory)
        self._disk.make_model_dir(model_id, weights.revision)
        reporter = progress.stage(Stage.STAGE_FETCHING, total=source_bytes(checked), emit=emit)
        paths: list[Path] = []
        files: list[CachedFile] = []
        for index, source in enumerate(checked):
            name = f"{index:03d}-" + re.sub(r"[^A-Za-z0-9._-]", "_", source.name)
            dest = directory / name
            created.append(dest)
            size, digest = self._fetcher.fetch(source, dest, control=control, progress=reporter.add)
            if is_pickle(name):
                dest, size, digest = convert_pickle(dest, created)
                name = dest.name
            paths.append(dest)
            files.append(CachedFile(name=name, sha256=digest, size_bytes=size))
        reporter.finish()
        control.checkpoint()
        emit(progress.message(Stage.STAGE_VERIFYING, tier=Tier.DISK))
        layouts = [read_layout(path) for path in paths]
        digest = weights_digest(weights)
        self._disk.write_manifest(
            model_id,
            Manifest(model_id=model_id, files=files, predicted_value=spec.predicted_value,
                     revision=weights.revision, digest=digest),
        )  # fmt: skip
        return DiskCopy(paths, layouts, sum(f.size_bytes for f in files),
                        revision=weights.revision, digest=digest)  # fmt: skip

    def _fetch_tree(
        self,
        spec: PreloadSpec,
        weights: CheckedWeights,
        *,
        control: LoadControl,
        progress: LoadProgress,
        emit: Emit,
        created: list[Path],
    ) -> DiskCopy:
        """A directory model: every file at its path under ``tree/``, each verified by its own
        sha256 (the Fetcher's ``.partial`` + rename); safetensors files' headers checked."""
        model_id = spec.model_id
        directory = self._disk.model_dir(model_id, weights.revision)
        # A revision directory left by an earlier, failed attempt has no manifest: start over.
        remove_leftover = directory.exists() and self._disk.read_manifest(directory) is None
        if remove_leftover:
            shutil.rmtree(directory, ignore_errors=True)
        if not directory.exists():
            created.append(directory)
        self._disk.make_model_dir(model_id, weights.revision)
        tree_root = directory / TREE
        tree_root.mkdir(parents=True, exist_ok=True)
        total = source_bytes(weights.sources)
        reporter = progress.stage(Stage.STAGE_FETCHING, total=total, emit=emit)
        tree: list[TreeFile] = []
        files: list[CachedFile] = []
        for source, path in zip(weights.sources, weights.paths, strict=True):
            dest = tree_root / path
            created.append(dest)
            size, digest = self._fetcher.fetch(source, dest, control=control, progress=reporter.add)
            tree.append(TreeFile(path, dest, size))
            files.append(CachedFile(name=f"{TREE}/{path}", sha256=digest, size_bytes=size,
                                    path=path))  # fmt: skip
        reporter.finish()
        control.checkpoint()
        emit(progress.message(Stage.STAGE_VERIFYING, tier=Tier.DISK))
        weight_files = [t.disk_path for t in tree if t.path.endswith(WEIGHT_SUFFIX)]
        layouts = [read_layout(path) for path in weight_files]
        digest = weights_digest(weights)
        self._disk.write_manifest(
            model_id,
            Manifest(model_id=model_id, files=files, predicted_value=spec.predicted_value,
                     revision=weights.revision, digest=digest),
        )  # fmt: skip
        return DiskCopy(weight_files, layouts, sum(f.size_bytes for f in files), tuple(tree),
                        weights.revision, digest)  # fmt: skip

    def install_artifacts(
        self,
        spec: PreloadSpec,
        *,
        control: LoadControl,
        progress: LoadProgress,
        emit: Emit,
    ) -> None:
        """Fetch each compiled artifact to scratch and install it; no-op without artifacts."""
        if not spec.artifacts:
            return
        scratch = self._disk.root / "artifacts-scratch" / model_key(spec.model_id)
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            for index, artifact in enumerate(spec.artifacts):
                self._install(spec, artifact, scratch, index=index, control=control)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        emit(progress.message(Stage.STAGE_ARTIFACTS))

    def _install(
        self,
        spec: PreloadSpec,
        artifact: ArtifactSpec,
        scratch: Path,
        *,
        index: int,
        control: LoadControl,
    ) -> None:
        source = self._policy.check(artifact.source.uri, artifact.source.sha256)
        blob = scratch / f"{index:03d}-{source.name}"
        self._fetcher.fetch(source, blob, control=control, progress=lambda _n: None)
        control.checkpoint()
        target = artifact_install.check_install_dir(artifact.install_dir, self._install_roots)
        if artifact.kind == pb.ARTIFACT_KIND_MEGA_CACHE:
            artifact_install.install_mega_cache(blob, target, model_id=spec.model_id)
        else:
            artifact_install.install_cache_tar(blob, target)
