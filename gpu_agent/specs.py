"""What a Preload asks for, in the agent's terms, and the checks it must pass before any write.

Owns :class:`PreloadSpec` (and the source and artifact specs in it), the model-id rule and
:func:`check_spec`: tier, value, source policy, the pickle opt-in, artifact install roots and a
directory model's paths and revision (:mod:`gpu_agent.model_dir`), all checked before anything is
fetched or written. It must not touch the tiers or speak gRPC (the
server builds specs from requests; the agent runs them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from common.errors import InvalidInput, PermissionDenied
from common.ids import ModelId
from common.tiers import HELD_TIERS, Tier
from gpu_agent import artifacts
from gpu_agent.checkpoints import is_pickle
from gpu_agent.config import AgentConfig
from gpu_agent.model_dir import (
    Expander,
    check_revision,
    digest_revision,
    directory_entries,
)
from gpu_agent.sources import CheckedSource, SourcePolicy
from protos import gpu_agent_pb2 as pb

_MODEL_ID = re.compile(r"^[A-Za-z0-9._:/@+-]+$")
ARTIFACT_KINDS = frozenset({pb.ARTIFACT_KIND_MEGA_CACHE, pb.ARTIFACT_KIND_INDUCTOR_CACHE_TAR})


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One file to fetch: URI and expected sha256 (hex, may be empty if the config allows);
    ``path``: where it lies in a directory model (empty: a single-file model's weights)."""

    uri: str
    sha256: str = ""
    path: str = ""
    size_bytes: int = 0


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
    target_tier: Tier = Tier.GPU
    predicted_value: float = 0.0
    deadline_unix_s: float | None = None
    gpu_uuid: str = ""
    allow_pickle: bool = False
    revision: str = ""
    """Directory models: the revision's name (empty: a digest of the file list)."""


@dataclass(frozen=True, slots=True)
class CheckedWeights:
    """A Preload's weights after the checks: the sources to fetch, in order, and for a directory
    model each one's path (aligned with ``sources``) and the revision they form."""

    sources: list[CheckedSource]
    paths: tuple[str, ...] = ()
    revision: str = ""

    @property
    def is_directory(self) -> bool:
        return bool(self.paths)


def validate_model_id(model_id: str, *, max_len: int) -> ModelId:
    """The id as a :class:`ModelId`; :class:`InvalidInput` if empty, too long or odd."""
    if not model_id:
        raise InvalidInput("model_id is empty")
    if len(model_id) > max_len:
        raise InvalidInput(f"model_id is {len(model_id)} characters; at most {max_len} are allowed")
    if not _MODEL_ID.match(model_id):
        raise InvalidInput(
            f"model_id may contain only letters, digits and . _ : / @ + -; got {model_id[:64]!r}"
        )
    return ModelId(model_id)


def check_spec(
    spec: PreloadSpec,
    *,
    config: AgentConfig,
    policy: SourcePolicy,
    held: bool,
    expand: Expander | None = None,
) -> CheckedWeights:
    """The weights of ``spec`` after the policy, or the error that refuses the request.

    ``held``: whether the agent already holds the model (then no sources are needed to move it to
    another tier). ``expand``: lists directory-like sources (:mod:`gpu_agent.model_dir`; the
    agent's is :meth:`gpu_agent.expansion.DirectoryExpander.expand_spec`'s, which listed the
    directory beforehand and filled in ``spec.revision``). Raises
    :class:`InvalidInput` or :class:`PermissionDenied`; writes nothing.
    """
    validate_model_id(spec.model_id, max_len=config.max_model_id_len)
    if spec.target_tier not in HELD_TIERS:
        raise InvalidInput(f"target_tier {spec.target_tier} is not a known tier")
    if not math.isfinite(spec.predicted_value) or spec.predicted_value < 0:
        raise InvalidInput("predicted_value must be a finite number >= 0")
    if not spec.weights and not held:
        raise InvalidInput(
            "a preload needs at least one weights source (only a model the agent already "
            "holds can be moved to another tier without them)"
        )
    if spec.revision:
        check_revision(spec.revision)
    entries = directory_entries(
        [(s.uri, s.sha256, s.path, s.size_bytes) for s in spec.weights], expand=expand
    )
    if entries is None:
        if spec.revision:
            raise InvalidInput("revision is for directory models: give each source its path")
        weights = CheckedWeights([policy.check(s.uri, s.sha256) for s in spec.weights])
    else:
        weights = CheckedWeights(
            [policy.check(e.uri, e.sha256) for e in entries],
            paths=tuple(e.path for e in entries),
            revision=spec.revision or digest_revision(entries),
        )
    for source in weights.sources:
        if source.directory:
            raise InvalidInput(
                f"{source.uri} names a directory: give it as the Preload's only weights source, "
                "without a path, and the agent lists its files"
            )
    # A directory's pickle files are never loaded by the agent (it caches them as they are, for
    # the engine that reads the directory), but the opt-in rule is the same for both kinds.
    names = weights.paths or tuple(s.name for s in weights.sources)
    for source, name in zip(weights.sources, names, strict=True):
        if is_pickle(name) and not (config.allow_pickle and spec.allow_pickle):
            raise PermissionDenied(
                f"{source.uri} is a pickle-based format; only safetensors are loaded unless "
                "the agent's allow_pickle setting and the request's allow_pickle are both set"
            )
    for artifact in spec.artifacts:
        if artifact.kind not in ARTIFACT_KINDS:
            raise InvalidInput(f"artifact kind {artifact.kind} is not a known kind")
        policy.check(artifact.source.uri, artifact.source.sha256)
        artifacts.check_install_dir(artifact.install_dir, config.allowed_install_roots)
    return weights
