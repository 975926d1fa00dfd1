"""Stage lead times learned from observed durations: how early each stage must begin.

A cold start is a chain of stages: node (provisioning), image (pull), weights (one hop per
tier: remote -> disk -> host -> GPU) and compile. Each observed duration is kept per stage and key
(a pool, an image, a model) in a short window; the planner plans with a high quantile of the
window (a late stage costs a cold start, an early one only some idle memory). Until
``min_samples`` observations exist, the catalog's and the config's defaults are used.

Pure and immutable: :meth:`LeadTimeBook.observe` returns a new book.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from planner.actions import Tier
from planner.catalog import ModelSpec
from planner.config import StageDefaults

WINDOW = 32
"""Observations kept per stage and key."""


class Stage(enum.Enum):
    """The stages of a cold start."""

    NODE = "node"
    IMAGE = "image"
    WEIGHTS_REMOTE = "weights_remote"
    WEIGHTS_DISK = "weights_disk"
    WEIGHTS_HOST = "weights_host"
    COMPILE = "compile"
    WAKE = "wake"
    """A sleeping replica's wake-up (keyed by model; :mod:`planner.engines`)."""
    REPLICA = "replica"
    """A serving pod's containers started -> Ready (keyed by model): measured and shown, not
    summed into a start, as it contains the weights and compile stages a start already sums."""


@dataclass(frozen=True, slots=True)
class StageObservation:
    """One measured stage: ``seconds`` for ``stage`` of ``key``; ``gb`` for image and weights.

    Image and weight stages are learned as bandwidth (GB/s) so one model's load teaches others.
    """

    stage: Stage
    key: str
    seconds: float
    gb: float = 0.0


@dataclass(frozen=True, slots=True)
class LeadTimeBook:
    """Recent stage durations (or bandwidths) by ``(stage, key)``, and their planned quantiles."""

    samples: Mapping[tuple[Stage, str], tuple[float, ...]] = field(default_factory=dict)
    quantile: float = 0.9
    min_samples: int = 3
    learned: Mapping[tuple[Stage, str], float] = field(default_factory=dict)
    """The planned value of every key with at least ``min_samples`` observations."""

    def observe(self, observations: Iterable[StageObservation]) -> LeadTimeBook:
        """A new book with ``observations`` folded in (each window keeps the last 32)."""
        updated = dict(self.samples)
        changed: set[tuple[Stage, str]] = set()
        for item in observations:
            if not item.seconds >= 0:
                continue
            if item.stage in _WEIGHT_STAGES:
                if item.gb <= 0 or item.seconds <= 0:
                    continue
                value = item.gb / item.seconds
            else:
                value = item.seconds
            key = (item.stage, item.key)
            updated[key] = (*updated.get(key, ())[-(WINDOW - 1) :], value)
            changed.add(key)
        if not changed:
            return self
        learned = dict(self.learned)
        for key in changed:
            values = updated[key]
            if len(values) >= self.min_samples:
                # Bandwidth: a low quantile of GB/s is the high quantile of the duration.
                level = 1.0 - self.quantile if key[0] in _WEIGHT_STAGES else self.quantile
                learned[key] = float(np.quantile(np.asarray(values), level))
        return LeadTimeBook(
            samples=updated, quantile=self.quantile, min_samples=self.min_samples, learned=learned
        )

    def observations(self, spec: ModelSpec) -> dict[str, int]:
        """How many observations each of ``spec``'s stages rests on (keys of
        :meth:`StartCosts.stages`; the container start is configured, never observed)."""
        pool = str(spec.node_pool)
        keys = {
            "node": (Stage.NODE, pool),
            "image": (Stage.IMAGE, spec.image),
            "weights_remote": (Stage.WEIGHTS_REMOTE, pool),
            "weights_disk": (Stage.WEIGHTS_DISK, pool),
            "weights_host": (Stage.WEIGHTS_HOST, pool),
            "compile_cached": (Stage.COMPILE, f"{spec.model}|cached"),
            "compile_cold": (Stage.COMPILE, f"{spec.model}|cold"),
            "replica_start": (Stage.REPLICA, str(spec.model)),
            "wake": (Stage.WAKE, str(spec.model)),
        }
        return {name: len(self.samples.get(key, ())) for name, key in keys.items()}

    def seconds(self, stage: Stage, key: str, default: float) -> float:
        """The planned duration of a non-weight stage (learned quantile, else ``default``)."""
        return self.learned.get((stage, key), default)

    def bandwidth(self, stage: Stage, key: str, default_gbps: float) -> float:
        """The planned bandwidth (GB/s) of a weight stage (a low quantile, else the default)."""
        learned = self.learned.get((stage, key))
        return default_gbps if learned is None or learned <= 0 else learned


_WEIGHT_STAGES = frozenset(
    {Stage.IMAGE, Stage.WEIGHTS_REMOTE, Stage.WEIGHTS_DISK, Stage.WEIGHTS_HOST}
)
"""Stages learned as bandwidth (GB/s) rather than seconds."""


@dataclass(frozen=True, slots=True)
class StartCosts:
    """One model's planned stage costs (seconds) from one book: what every start is summed from.

    ``weights_s`` is indexed by the tier the weights come from (REMOTE, DISK, HOST).
    """

    container_s: float
    node_s: float
    pull_s: float
    weights_s: tuple[float, float, float]
    compile_cached_s: float
    compile_cold_s: float

    @classmethod
    def plan(cls, book: LeadTimeBook, spec: ModelSpec, defaults: StageDefaults) -> StartCosts:
        """The costs of ``spec``'s stages: learned quantiles where known, else the defaults."""
        pool = str(spec.node_pool)
        return cls(
            container_s=defaults.container_start_s,
            node_s=book.seconds(Stage.NODE, pool, defaults.node_provision_s),
            pull_s=spec.image_gb
            / book.bandwidth(Stage.IMAGE, spec.image, defaults.image_pull_gbps),
            weights_s=(
                weights_seconds(book, spec, defaults, tier=Tier.REMOTE),
                weights_seconds(book, spec, defaults, tier=Tier.DISK),
                weights_seconds(book, spec, defaults, tier=Tier.HOST),
            ),
            compile_cached_s=book.seconds(
                Stage.COMPILE,
                f"{spec.model}|cached",
                spec.compile_s * defaults.compile_cached_fraction,
            ),
            compile_cold_s=book.seconds(Stage.COMPILE, f"{spec.model}|cold", spec.compile_s),
        )

    def stages(self) -> dict[str, float]:
        """The planned seconds of each stage by name (what ``prewarm explain`` shows)."""
        return {
            "node": self.node_s,
            "image": self.pull_s,
            "container": self.container_s,
            "weights_remote": self.weights_s[Tier.REMOTE],
            "weights_disk": self.weights_s[Tier.DISK],
            "weights_host": self.weights_s[Tier.HOST],
            "compile_cached": self.compile_cached_s,
            "compile_cold": self.compile_cold_s,
        }

    def start(self, *, tier: Tier, image_cached: bool, needs_node: bool) -> float:
        """Planned seconds to bring one replica up from weights held in ``tier``.

        ``tier`` is where the weights are now (``GPU`` means nothing is left to do). A new node
        has no caches: the image is pulled and the weights come from remote storage.
        """
        if tier == Tier.GPU:
            return 0.0
        total = self.container_s
        if needs_node:
            total += self.node_s
        if not image_cached or needs_node:
            total += self.pull_s
        total += self.weights_s[Tier.REMOTE if needs_node else tier]
        cached = tier >= Tier.DISK and not needs_node
        total += self.compile_cached_s if cached else self.compile_cold_s
        return total


def start_seconds(
    book: LeadTimeBook,
    spec: ModelSpec,
    defaults: StageDefaults,
    *,
    tier: Tier,
    image_cached: bool,
    needs_node: bool,
) -> float:
    """Planned seconds to bring one replica of ``spec`` up from weights held in ``tier``
    (:meth:`StartCosts.start`; plan the costs once when asking for several starts)."""
    costs = StartCosts.plan(book, spec, defaults)
    return costs.start(tier=tier, image_cached=image_cached, needs_node=needs_node)


def weights_seconds(
    book: LeadTimeBook, spec: ModelSpec, defaults: StageDefaults, *, tier: Tier
) -> float:
    """Planned seconds to get ``spec``'s weights from ``tier`` into GPU memory."""
    pool = str(spec.node_pool)
    gb = spec.weights_gb
    if tier == Tier.GPU:
        return 0.0
    if tier == Tier.HOST:
        return gb / book.bandwidth(Stage.WEIGHTS_HOST, pool, defaults.host_to_gpu_gbps)
    # The weight stage is observed end to end (source tier -> GPU), so defaults chain the hops.
    to_gpu = 1.0 / defaults.host_to_gpu_gbps
    if tier == Tier.DISK:
        default = 1.0 / (1.0 / defaults.disk_gbps + to_gpu)
        return gb / book.bandwidth(Stage.WEIGHTS_DISK, pool, default)
    default = 1.0 / (1.0 / defaults.remote_gbps + to_gpu)
    return gb / book.bandwidth(Stage.WEIGHTS_REMOTE, pool, default)
