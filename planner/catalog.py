"""The model catalog: what it costs to bring each model up, and its replica bounds.

A catalog is an optional YAML mapping ``models: {MODEL_ID: {field: value}}`` (a bare mapping of
model ids at the top level is accepted too), with an optional top-level ``workload_template``
(:class:`WorkloadTemplate`; a reserved key in both forms). Fields per model, all optional:

- ``weights_gb`` (GB of weights, decimal GB), ``image`` and ``image_gb`` (the serving image and its
  compressed size), ``replica_rps`` (requests per second one replica sustains), ``compile_s``
  (compile/warm-up seconds after the weights are in GPU memory), ``node_pool``, ``service_s``
  (seconds a request stays in service), ``min_replicas`` / ``max_replicas``, and ``workload``
  (``{namespace, name, kind?, api_version?}``: where replica floors are applied).
- ``weights`` (``[{uri, sha256, size_bytes?, path?}]``: the files the GPU agents preload; with a
  ``path`` on every entry the model is a directory, each file at its relative path inside it,
  which the agents materialise read-only for serving engines, see ``docs/engines.md``; or one
  directory URI alone, ``[{uri: "hf://org/name@<commit>"}]`` or
  ``[{uri: "s3://bucket/models/llama/"}]``, whose files and per-file hashes the agents take from
  the Hub's or the bucket's listing, see ``docs/sources.md``) and
  ``artifacts`` (``[{uri, sha256, kind, install_dir?}]``: compiled artifacts the agents install
  with every preload of the model; ``kind`` is one of :data:`ARTIFACT_KINDS`, the GPU agent's
  artifact kinds; ``docs/artifacts.md`` says where each lands and which engine reads it). URIs use
  a scheme of :data:`SOURCE_SCHEMES`, the ones the agents fetch.

Where a model's replica floors go (its *workload*), first match wins:

1. its catalog entry's ``workload``;
2. the workload that claims it in the cluster (:attr:`Catalog.discovered`, filled each tick by
   :mod:`actuator.workloads` from the ``prewarm.io/model`` label and annotation);
3. the catalog's top-level ``workload_template`` (:class:`WorkloadTemplate`), filled from the parts
   of the model id;
4. a Deployment in ``default`` named after the model id (:func:`planner.planner.workload_for`).

Models missing from the catalog get *deterministic* defaults: a stable hash of the model id picks a
size class from :data:`DEFAULT_SIZE_CLASSES`, a table of real open-weight model sizes in fp16
(parameters x 2 bytes), drawn with the listed weights. The same id always gets the same class, on
every machine and in every run. Fields a catalog entry leaves out are filled from the same class.

This module owns parsing and validation; it performs no I/O except :func:`load_catalog`, the one
file read, which the planning functions never call.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml

from common.errors import InvalidInput
from common.ids import ModelId, PoolName
from planner.actions import WorkloadRef
from planner.engines import EngineSpec, parse_engine

_log = logging.getLogger(__name__)

GB = 1_000_000_000
"""Bytes in one (decimal) GB, the unit of every ``*_gb`` field."""

DEFAULT_POOL = PoolName("gpu")
DEFAULT_IMAGE = "vllm/vllm-openai:v0.6.6"
DEFAULT_IMAGE_GB = 8.0
DEFAULT_SERVICE_S = 2.0


@dataclass(frozen=True, slots=True)
class SizeClass:
    """One row of the default-size table: a family of real models of about the same size."""

    name: str
    example: str
    weights_gb: float
    replica_rps: float
    compile_s: float
    share: float


DEFAULT_SIZE_CLASSES: tuple[SizeClass, ...] = (
    # fp16 weights = parameters x 2 bytes (rounded up to 0.1 GB). replica_rps: sustained requests/s
    # of one replica at ~300 output tokens per request on one 80 GB GPU (tensor-parallel for the
    # two largest classes); compile_s: torch.compile / CUDA-graph capture after loading. The
    # shares follow what serving fleets hold: many small and 7-8B models, fewer large ones.
    SizeClass("1.5B", "Qwen2.5-1.5B (1.54B params)", 3.1, 24.0, 25.0, 0.15),
    SizeClass("3B", "Llama-3.2-3B (3.21B params)", 6.5, 16.0, 30.0, 0.10),
    SizeClass("7B", "Mistral-7B-v0.3 (7.25B params)", 14.5, 8.0, 45.0, 0.25),
    SizeClass("8B", "Llama-3.1-8B (8.03B params)", 16.1, 8.0, 45.0, 0.20),
    SizeClass("13B", "Llama-2-13B (13.0B params)", 26.1, 5.0, 60.0, 0.12),
    SizeClass("34B", "CodeLlama-34B (33.7B params)", 67.5, 2.5, 90.0, 0.08),
    SizeClass("70B", "Llama-3.1-70B (70.6B params)", 141.2, 1.2, 120.0, 0.10),
)
"""The documented distribution of default model sizes (shares sum to 1)."""


@dataclass(frozen=True, slots=True)
class WeightFile:
    """One weight file of a model, as the GPU agent fetches it: a URI of :data:`SOURCE_SCHEMES`,
    lowercase hex sha256 (the agent refuses files it cannot verify; empty for an ``hf://`` file,
    which the Hub's listing verifies, and for a directory URI), size when known (0), and for a
    directory model its relative ``path`` inside the directory (empty otherwise).

    A directory URI (``hf://org/name@rev``, ``hf://org/name@rev/folder/``,
    ``s3://bucket/prefix/``; :attr:`is_directory`) is the model's only entry: the agent lists it.
    """

    uri: str
    sha256: str
    size_bytes: int = 0
    path: str = ""

    @property
    def is_directory(self) -> bool:
        """Whether :attr:`uri` names a directory the agent lists (see the class docstring)."""
        return is_directory_uri(self.uri)


SOURCE_SCHEMES: tuple[str, ...] = ("file", "http", "https", "s3", "hf")
"""URI schemes of weights and artifacts: the ones a GPU agent can fetch (its ``allowed_schemes``
setting narrows ``file`` and ``http(s)`` further per cluster, by default to ``file`` and
``https``; ``s3`` and ``hf`` need its ``remote.s3.allowed_buckets`` / ``remote.hf.allowed_repos``,
see ``docs/sources.md``)."""

_HF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_directory_uri(uri: str) -> bool:
    """Whether ``uri`` names a directory: ``hf://org/name[@rev]`` or one ending in ``/``, and
    ``s3://bucket/`` or ``s3://bucket/prefix/`` (the GPU agent's rule; no I/O)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "hf":
        segments = uri[len("hf://") :].split("/")
        tail = "/".join(segments[2:])
        return tail == "" or tail.endswith("/")
    if scheme == "s3":
        return parts.path in ("", "/") or parts.path.endswith("/")
    return False


def _check_remote_uri(uri: str, *, at: str) -> None:
    """The shape of an ``hf://`` or ``s3://`` URI, as the GPU agent parses it."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if "?" in uri or "#" in uri or ".." in uri.split("/"):
        raise InvalidInput(f"{at}.uri {uri!r} must not contain '?', '#' or a '..' segment")
    if scheme == "hf":
        segments = uri[len("hf://") :].split("/")
        name = segments[1].partition("@")[0] if len(segments) > 1 else ""
        if len(segments) < 2 or not _HF_NAME.match(segments[0]) or not _HF_NAME.match(name):
            raise InvalidInput(
                f"{at}.uri {uri!r} must name a Hub repository: hf://org/name@<commit> (the whole "
                "repository), hf://org/name@<commit>/folder/ or hf://org/name@<commit>/file"
            )
        if "@" in segments[1] and not segments[1].partition("@")[2]:
            raise InvalidInput(f"{at}.uri {uri!r} has an empty revision after '@'")
    elif scheme == "s3" and not _S3_BUCKET.match(parts.netloc):
        raise InvalidInput(
            f"{at}.uri {uri!r} must be s3://bucket/key or s3://bucket/prefix/ (bucket: 3-63 "
            "lowercase letters, digits, '.' and '-')"
        )


ArtifactKind = Literal["mega_cache", "inductor_cache_tar"]
"""A compiled artifact's kind: the GPU agent's ``ArtifactKind`` names (protos/gpu_agent.proto)
without the ``ARTIFACT_KIND_`` prefix, lowercase."""

ARTIFACT_KINDS: tuple[ArtifactKind, ...] = get_args(ArtifactKind)

DEFAULT_ARTIFACT_ROOT = "/var/cache/prewarm-compile"
"""Where artifacts are installed when an entry names no ``install_dir``: the GPU agent's default
``allowed_install_roots`` and the chart's ``agent.compileCache.path`` (a hostPath on each node)."""


@dataclass(frozen=True, slots=True)
class ArtifactFile:
    """One compiled artifact of a model, as the GPU agent installs it: ``uri`` and lowercase hex
    ``sha256`` of the file to fetch, its ``kind``, and the absolute node directory it is installed
    into (which must lie under one of the agent's ``allowed_install_roots``)."""

    uri: str
    sha256: str
    kind: ArtifactKind
    install_dir: str


def artifact_key(model: ModelId) -> str:
    """The model's name in install paths: characters other than letters, digits and ``. _ -``
    replaced by ``_`` (the agent names an installed mega-cache ``<key>.mega-cache`` alike)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model)


def default_install_dir(model: ModelId, kind: ArtifactKind, *, root: str) -> str:
    """Where an artifact of ``kind`` goes when its entry names no ``install_dir``: one directory
    per model under ``root`` (``<root>/<key>``), with Inductor cache archives unpacked into its
    ``inductor`` subdirectory, so one model's caches never overwrite another's."""
    base = PurePosixPath(root) / artifact_key(model)
    return str(base / "inductor" if kind == "inductor_cache_tar" else base)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What it costs to bring one model up, and its replica bounds.

    Contract: sizes and rates are finite and ``> 0`` except ``compile_s >= 0``;
    ``0 <= min_replicas <= max_replicas``.
    """

    model: ModelId
    weights_gb: float
    image: str
    image_gb: float
    replica_rps: float
    compile_s: float
    node_pool: PoolName
    service_s: float = DEFAULT_SERVICE_S
    min_replicas: int = 0
    max_replicas: int = 1_000
    workload: WorkloadRef | None = None
    weights: tuple[WeightFile, ...] = ()
    """The weight files the GPU agents preload (none: agents cannot preload this model)."""
    artifacts: tuple[ArtifactFile, ...] = ()
    """Compiled artifacts sent with every preload of the model (none: compile runs cold)."""
    engine: EngineSpec | None = None
    """The serving engine, when its idle replicas can sleep (:mod:`planner.engines`)."""
    defaulted: bool = False

    @property
    def weights_bytes(self) -> int:
        """Weights size in bytes."""
        return round(self.weights_gb * GB)


def size_class_for(model: ModelId) -> SizeClass:
    """The default size class of ``model``: a stable hash of its id mapped through the shares."""
    digest = hashlib.sha256(model.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for size_class in DEFAULT_SIZE_CLASSES:
        cumulative += size_class.share
        if position < cumulative:
            return size_class
    return DEFAULT_SIZE_CLASSES[-1]


DEFAULT_SPEC_CACHE = 1 << 18
"""Default specs remembered (the planner asks for every model each cycle, and a hash per model
and cycle was a measurable share of a 100,000-model cycle). Larger than any fleet planned: an LRU
cache cycled in the same order through more models than it holds would miss every time."""


@functools.lru_cache(maxsize=DEFAULT_SPEC_CACHE)
def default_spec(model: ModelId) -> ModelSpec:
    """The deterministic default spec of a model the catalog does not list (frozen, so the same
    object is returned for the same id)."""
    size_class = size_class_for(model)
    return ModelSpec(
        model=model,
        weights_gb=size_class.weights_gb,
        image=DEFAULT_IMAGE,
        image_gb=DEFAULT_IMAGE_GB,
        replica_rps=size_class.replica_rps,
        compile_s=size_class.compile_s,
        node_pool=DEFAULT_POOL,
        defaulted=True,
    )


_DNS_LABEL_MAX = 63
_PLACEHOLDERS = ("model", "org", "name")


def dns_name(text: str) -> str:
    """``text`` as a Kubernetes object name (RFC 1123 label): lowercase, each run of characters
    other than letters and digits turned into one ``-``, no ``-`` at either end, at most 63
    characters (``meta-llama/Llama-3.1-8B`` -> ``meta-llama-llama-3-1-8b``). May be empty."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return name[:_DNS_LABEL_MAX].rstrip("-")


def model_parts(model: ModelId) -> dict[str, str]:
    """The placeholders of a :class:`WorkloadTemplate` for ``model``, each a :func:`dns_name`:
    ``{model}`` the whole id, ``{name}`` the part after the last ``/``, ``{org}`` the part before
    it (empty for an id without ``/``)."""
    org, _, name = model.rpartition("/")
    return {"model": dns_name(model), "org": dns_name(org), "name": dns_name(name)}


@dataclass(frozen=True, slots=True)
class WorkloadTemplate:
    """Where a model's workload is, by rule: ``namespace`` and ``name`` are ``str.format``
    templates over :func:`model_parts` (``{model}``, ``{org}``, ``{name}``), e.g.
    ``{namespace: serving, name: "{name}-predictor", kind: InferenceService, api_version:
    serving.kserve.io/v1beta1}``. The forecaster's series carry only the model id, so the id is
    all a template can use."""

    namespace: str
    name: str
    kind: str = "Deployment"
    api_version: str = "apps/v1"

    def render(self, model: ModelId) -> WorkloadRef:
        """The workload of ``model``; :class:`InvalidInput` when a filled name is not a valid
        object name (e.g. ``{org}`` of an id without ``/``)."""
        parts = model_parts(model)
        namespace = self.namespace.format(**parts)
        name = self.name.format(**parts)
        for what, value in (("namespace", namespace), ("name", name)):
            if not value or dns_name(value) != value:
                raise InvalidInput(
                    f"workload_template {what} {getattr(self, what)!r} gives {value!r} for model "
                    f"{model!r}, not a valid Kubernetes name; name the model's workload in its "
                    "catalog entry instead"
                )
        return WorkloadRef(namespace, name, self.kind, self.api_version)


@dataclass(slots=True)
class Catalog:
    """Specs by model id; :meth:`spec` falls back to :func:`default_spec` (logged once each).

    ``discovered`` (models' workloads found in the cluster) is replaced as a whole by its one
    writer (:mod:`actuator.workloads`), so a reader sees one snapshot or the next, never a mix.
    """

    specs: Mapping[ModelId, ModelSpec] = field(default_factory=dict)
    workload_template: WorkloadTemplate | None = None
    discovered: Mapping[ModelId, WorkloadRef] = field(default_factory=dict)
    _warned: set[ModelId] = field(default_factory=set, repr=False)
    _template_warned: set[ModelId] = field(default_factory=set, repr=False)

    def spec(self, model: ModelId) -> ModelSpec:
        """The spec of ``model``; a model the catalog does not list gets its default spec.

        Its ``workload`` is resolved in the order of the module docstring; None means the
        default Deployment. A template that cannot name this model's workload is logged and
        skipped (the model falls back to the default).
        """
        found = self.specs.get(model)
        if found is None:
            if model not in self._warned:
                self._warned.add(model)
                if self.specs:
                    _log.info("model %s is not in the catalog; using default sizes", model)
            found = default_spec(model)
        if found.workload is not None:
            return found
        workload = self.discovered.get(model)
        if workload is None and self.workload_template is not None:
            try:
                workload = self.workload_template.render(model)
            except InvalidInput as error:
                if model not in self._template_warned:
                    self._template_warned.add(model)
                    _log.warning("%s", error)
        return found if workload is None else replace(found, workload=workload)

    def specs_for(self, models: Iterable[ModelId]) -> list[ModelSpec]:
        """Specs of ``models`` in order."""
        return [self.spec(model) for model in models]


_NUMBER_FIELDS = ("weights_gb", "image_gb", "replica_rps", "compile_s", "service_s")
_POSITIVE_FIELDS = ("weights_gb", "image_gb", "replica_rps", "service_s")
_KNOWN_FIELDS = {
    *_NUMBER_FIELDS,
    "image",
    "node_pool",
    "min_replicas",
    "max_replicas",
    "workload",
    "weights",
    "artifacts",
    "engine",
}


def _number(value: Any, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number, got {value!r}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidInput(f"{where} must be finite, got {value!r}")
    return number


def _integer(value: Any, *, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where} must be an integer >= 0, got {value!r}")
    return value


def _workload(value: Any, *, where: str) -> WorkloadRef:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise InvalidInput(f"{where} must be a mapping with at least 'namespace' and 'name'")
    unknown = set(value) - {"namespace", "name", "kind", "api_version"}
    if unknown:
        raise InvalidInput(f"{where} has unknown fields {sorted(unknown)}")
    return WorkloadRef(
        namespace=str(value.get("namespace", "default")),
        name=str(value["name"]),
        kind=str(value.get("kind", "Deployment")),
        api_version=str(value.get("api_version", "apps/v1")),
    )


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _source(item: dict[str, Any], *, at: str, example: str) -> tuple[str, str]:
    """The checked ``uri`` and ``sha256`` of a weights or artifacts entry.

    The sha256 may be left out for an ``hf://`` file (the Hub's listing has its hash) and must be
    left out for a directory URI (each file's hash comes from the listing); the caller decides
    whether a directory URI is allowed where it stands.
    """
    uri, digest = item.get("uri"), item.get("sha256")
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidInput(f"{at}.uri must be a URI such as {example}")
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in SOURCE_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in SOURCE_SCHEMES)
        raise InvalidInput(
            f"{at}.uri {uri!r} has unsupported scheme {scheme!r}: GPU agents fetch {schemes}"
        )
    if scheme in ("hf", "s3"):
        _check_remote_uri(uri, at=at)
    if is_directory_uri(uri):
        if digest is not None:
            raise InvalidInput(
                f"{at}: {uri} is a directory; leave out sha256 (the agent verifies each file by "
                "the hash the listing gives)"
            )
        return uri, ""
    if digest is None and scheme == "hf":
        return uri, ""
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise InvalidInput(f"{at}.sha256 must be 64 lowercase hex digits (sha256sum's output)")
    return uri, digest


_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._+=@-]+$")
_MAX_PATH_LEN = 512


def _relative_path(value: Any, *, at: str) -> str:
    # The GPU agent's rule (gpu_agent/model_dir.py check_relpath), caught here at load so a bad
    # catalog fails when the daemon starts rather than at every Preload.
    if not isinstance(value, str) or not value or len(value) > _MAX_PATH_LEN:
        raise InvalidInput(
            f"{at} must be a path inside the model directory (1..{_MAX_PATH_LEN} characters), "
            f"e.g. config.json or tokenizer/vocab.json; got {value!r}"
        )
    segments = value.split("/")
    if value.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise InvalidInput(
            f"{at} {value!r} must be relative, with no empty, '.' or '..' segment "
            "(it names a file inside the model directory)"
        )
    bad = next((s for s in segments if not _PATH_SEGMENT.match(s)), None)
    if bad is not None or value.endswith(".partial"):
        raise InvalidInput(
            f"{at} {value!r}: each segment may contain only letters, digits and . _ - + = @ "
            "(and not end in .partial)"
        )
    return value


def _weights(value: Any, *, where: str) -> tuple[WeightFile, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{where} must be a non-empty list of {{uri, sha256, size_bytes}}")
    files = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, dict) or set(item) - {"uri", "sha256", "size_bytes", "path"}:
            raise InvalidInput(
                f"{at} must be a mapping with uri, sha256, and optional size_bytes and path"
            )
        uri, digest = _source(item, at=at, example="file:///models/x.safetensors")
        if is_directory_uri(uri) and (len(value) > 1 or set(item) != {"uri"}):
            raise InvalidInput(
                f"{at}: {uri} is a directory: it must be the model's only weights entry, with "
                "just its uri (no sha256, size_bytes or path): the GPU agents list its files"
            )
        size = _integer(item.get("size_bytes", 0), where=f"{at}.size_bytes")
        path = _relative_path(item["path"], at=f"{at}.path") if "path" in item else ""
        files.append(WeightFile(uri=uri, sha256=digest, size_bytes=size, path=path))
    with_path = [f.path for f in files if f.path]
    if with_path and len(with_path) != len(files):
        raise InvalidInput(
            f"{where}: either every entry has a path (a model directory: config, tokenizer, "
            f"shards, each at its path) or none has (weights files); {len(with_path)} of "
            f"{len(files)} have one"
        )
    twice = sorted({p for p in with_path if with_path.count(p) > 1})
    if twice:
        raise InvalidInput(f"{where}: path {twice[0]!r} is listed twice")
    return tuple(files)


def _install_dir(value: Any, *, at: str) -> str:
    # The agent refuses a relative directory or one with '..' parts (after that, one outside
    # its allowed roots, which only the agent knows); the first two are caught here, at load.
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidInput(f"{at} must be an absolute directory on the node, got {value!r}")
    if ".." in PurePosixPath(value).parts:
        raise InvalidInput(f"{at} {value!r} must not contain '..'")
    return value


def _artifacts(model: ModelId, value: Any, *, where: str, root: str) -> tuple[ArtifactFile, ...]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list of {{uri, sha256, kind, install_dir?}}")
    kinds = ", ".join(ARTIFACT_KINDS)
    files: list[ArtifactFile] = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, dict) or set(item) - {"uri", "sha256", "kind", "install_dir"}:
            raise InvalidInput(f"{at} must be a mapping with uri, sha256, kind, install_dir?")
        uri, digest = _source(item, at=at, example="https://artifacts.example/m.mega-cache")
        if is_directory_uri(uri):
            raise InvalidInput(f"{at}.uri {uri!r} is a directory; an artifact is one file")
        kind = item.get("kind")
        if kind not in ARTIFACT_KINDS:
            raise InvalidInput(
                f"{at}.kind must be one of {kinds} (the GPU agent's artifact kinds), got {kind!r}"
            )
        if "install_dir" in item:
            install_dir = _install_dir(item["install_dir"], at=f"{at}.install_dir")
        elif artifact_key(model) in (".", ".."):
            raise InvalidInput(f"{at} needs an install_dir: the model id cannot name a directory")
        else:
            install_dir = default_install_dir(model, kind, root=root)
        files.append(ArtifactFile(uri=uri, sha256=digest, kind=kind, install_dir=install_dir))
    # The agent names an installed mega-cache after the model, so a second one installed into
    # the same directory would replace the first.
    mega_dirs = [f.install_dir for f in files if f.kind == "mega_cache"]
    shared = sorted({d for d in mega_dirs if mega_dirs.count(d) > 1})
    if shared:
        raise InvalidInput(
            f"{where} installs two mega_cache artifacts into {shared[0]}; the second would "
            "overwrite the first: give one of them its own install_dir"
        )
    return tuple(files)


def _spec_from_entry(model: ModelId, entry: Any, *, origin: str, artifact_root: str) -> ModelSpec:
    where = f"{origin}: model {model!r}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where} must map field names to values, got {type(entry).__name__}")
    unknown = set(entry) - _KNOWN_FIELDS
    if unknown:
        raise InvalidInput(
            f"{where} has unknown fields {sorted(unknown)}; known: {sorted(_KNOWN_FIELDS)}"
        )
    spec = default_spec(model)
    changes: dict[str, Any] = {"defaulted": False}
    for name in _NUMBER_FIELDS:
        if name in entry:
            number = _number(entry[name], where=f"{where} {name}")
            if number < 0 or (name in _POSITIVE_FIELDS and number == 0):
                bound = "> 0" if name in _POSITIVE_FIELDS else ">= 0"
                raise InvalidInput(f"{where} {name} must be {bound}, got {number}")
            changes[name] = number
    for name in ("image", "node_pool"):
        if name in entry:
            if not isinstance(entry[name], str) or not entry[name]:
                raise InvalidInput(f"{where} {name} must be a non-empty string")
            changes[name] = PoolName(entry[name]) if name == "node_pool" else entry[name]
    for name in ("min_replicas", "max_replicas"):
        if name in entry:
            changes[name] = _integer(entry[name], where=f"{where} {name}")
    if "workload" in entry:
        changes["workload"] = _workload(entry["workload"], where=f"{where} workload")
    if "weights" in entry:
        changes["weights"] = _weights(entry["weights"], where=f"{where} weights")
    if "engine" in entry:
        changes["engine"] = parse_engine(entry["engine"], where=f"{where} engine")
    if "artifacts" in entry:
        changes["artifacts"] = _artifacts(
            model, entry["artifacts"], where=f"{where} artifacts", root=artifact_root
        )
    spec = replace(spec, **changes)
    if spec.min_replicas > spec.max_replicas:
        raise InvalidInput(
            f"{where}: min_replicas ({spec.min_replicas}) exceeds max_replicas "
            f"({spec.max_replicas})"
        )
    return spec


def parse_catalog(
    text: str, *, origin: str = "catalog", artifact_root: str = DEFAULT_ARTIFACT_ROOT
) -> Catalog:
    """Parse catalog YAML text; :class:`InvalidInput` names the file, model and field at fault.

    ``artifact_root``: the node directory artifacts without an ``install_dir`` are installed under.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidInput(f"{origin} is not valid YAML: {error}") from error
    if data is None:
        return Catalog()
    if not isinstance(data, dict):
        raise InvalidInput(f"{origin} must hold a mapping of models, got {type(data).__name__}")
    data = dict(data)
    template: WorkloadTemplate | None = None
    if TEMPLATE_KEY in data:
        # A reserved key in both forms: no model is called "workload_template".
        template = _template(data.pop(TEMPLATE_KEY), where=f"{origin}: {TEMPLATE_KEY}")
    models: Any = data
    if "models" in data:
        if set(data) - {"models"}:
            extra = sorted(set(data) - {"models"})
            raise InvalidInput(f"{origin}: unknown top-level keys {extra}")
        models = data["models"]
    if models is None:
        return Catalog(workload_template=template)
    if not isinstance(models, dict):
        raise InvalidInput(f"{origin}: 'models' must be a mapping of model id to fields")
    specs: dict[ModelId, ModelSpec] = {}
    for key, entry in models.items():
        model = ModelId(str(key))
        specs[model] = _spec_from_entry(model, entry, origin=origin, artifact_root=artifact_root)
    return Catalog(specs=specs, workload_template=template)


TEMPLATE_KEY = "workload_template"


def _template(value: Any, *, where: str) -> WorkloadTemplate:
    """A checked :class:`WorkloadTemplate`: placeholders other than :data:`_PLACEHOLDERS` and
    malformed braces fail here, at load, rather than at every plan."""
    if not isinstance(value, dict) or not all(
        isinstance(value.get(key), str) and value[key] for key in ("namespace", "name")
    ):
        raise InvalidInput(
            f"{where} must be a mapping with 'namespace' and 'name' templates (and optional "
            "'kind', 'api_version'), e.g. {namespace: serving, name: '{name}-predictor'}"
        )
    unknown = set(value) - {"namespace", "name", "kind", "api_version"}
    if unknown:
        raise InvalidInput(f"{where} has unknown fields {sorted(unknown)}")
    sample = dict.fromkeys(_PLACEHOLDERS, "x")
    for key in ("namespace", "name"):
        try:
            filled = value[key].format(**sample)
        except (KeyError, IndexError, ValueError) as error:
            names = ", ".join("{" + p + "}" for p in _PLACEHOLDERS)
            raise InvalidInput(
                f"{where} {key} {value[key]!r} is not a valid template ({error!r}); it may use "
                f"{names}"
            ) from None
        if dns_name(filled) != filled:
            # The placeholders are always valid names: the literal text around them is not.
            raise InvalidInput(
                f"{where} {key} {value[key]!r} cannot make a Kubernetes name (lowercase letters, "
                "digits and '-' around the placeholders)"
            )
    return WorkloadTemplate(
        namespace=value["namespace"],
        name=value["name"],
        kind=str(value.get("kind", "Deployment")),
        api_version=str(value.get("api_version", "apps/v1")),
    )


def load_catalog(path: Path, *, artifact_root: str = DEFAULT_ARTIFACT_ROOT) -> Catalog:
    """Read and parse the catalog file at ``path`` (the one I/O in this package)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInput(f"cannot read catalog {path}: {error.strerror or error}") from error
    return parse_catalog(text, origin=str(path), artifact_root=artifact_root)
