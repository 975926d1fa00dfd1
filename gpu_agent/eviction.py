"""Which models to evict when memory is needed: lowest predicted value per byte first.

Owns the eviction rule, as pure functions over explicit candidates (no clock, no NVML, no torch):
value density = predicted value / bytes, supplied by the daemon; models without a value (0) have
density 0; ties, unknown values included, fall back to least recently used. It must not free
anything itself.

The rule's guarantees (property-tested): an eviction never drops a model whose density is higher
than that of a model it keeps, and it frees at least the bytes asked for when the candidates hold
that many.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.ids import ModelId


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model that could be evicted from one tier."""

    model_id: ModelId
    nbytes: int
    predicted_value: float
    last_used: float  # any monotone timestamp; only the order matters

    @property
    def density(self) -> float:
        """Predicted value per byte; 0 when no value was supplied."""
        if self.nbytes <= 0 or self.predicted_value <= 0:
            return 0.0
        return self.predicted_value / self.nbytes


def eviction_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates in the order they should go: density ascending, then LRU, then id."""
    return sorted(candidates, key=lambda c: (c.density, c.last_used, c.model_id))


def choose_victims(candidates: Sequence[Candidate], need_bytes: int) -> list[Candidate]:
    """The shortest prefix of :func:`eviction_order` that frees at least ``need_bytes``.

    When all candidates together hold less than ``need_bytes`` every candidate is returned; the
    caller decides whether that is enough.
    """
    victims: list[Candidate] = []
    freed = 0
    for candidate in eviction_order(candidates):
        if freed >= need_bytes:
            break
        victims.append(candidate)
        freed += candidate.nbytes
    return victims


def admit(
    candidates: Sequence[Candidate], newcomer: Candidate, *, free_bytes: int
) -> list[Candidate] | None:
    """Victims to evict so ``newcomer`` fits, or ``None`` when it should not be admitted.

    Only candidates the rule ranks before the newcomer (lower density; equal density and used
    less recently) may make room, so a preload never displaces something worth more per byte.
    """
    need = newcomer.nbytes - free_bytes
    if need <= 0:
        return []
    rank = (newcomer.density, newcomer.last_used, newcomer.model_id)
    cheaper = [c for c in candidates if (c.density, c.last_used, c.model_id) < rank]
    if sum(c.nbytes for c in cheaper) < need:
        return None
    return choose_victims(cheaper, need)
