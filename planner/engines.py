"""Serving engines' own warm state: a replica put to sleep keeps its process and wakes in seconds.

Owns :class:`EngineSpec` (a catalog model's ``engine`` entry) and its parsing. An engine that can
sleep frees the GPU memory of an idle replica without ending it: vLLM's sleep mode
(``--enable-sleep-mode`` with ``VLLM_SERVER_DEV_MODE=1``; ``POST /sleep?level=1`` moves the
weights to CPU memory and drops the KV cache, ``level=2`` drops the weights too; ``POST
/wake_up``; ``GET /is_sleeping``) and SGLang's memory release (``POST
/release_memory_occupation`` and ``/resume_memory_occupation``). The wake-up time is learned
per model from the wakes the actuator times; until then the planner uses ``wake_s``, by default
the upper end vLLM publishes for level 1 across model sizes from 0.6B to 235B parameters (0.1 to
6 s, vLLM blog "Zero-Reload Model Switching with vLLM Sleep Mode", 2025-10). Must not do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from common.errors import InvalidInput

EngineKind = Literal["vllm", "sglang"]
ENGINE_KINDS: tuple[EngineKind, ...] = get_args(EngineKind)
DEFAULT_WAKE_S = 6.0
"""vLLM's published level-1 wake-up time for its largest benchmarked model (the upper end)."""
DEFAULT_PORT = {"vllm": 8000, "sglang": 30000}
"""Each engine's default HTTP port (``vllm serve --port``, ``sglang.launch_server --port``)."""


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """A model's serving engine, as far as sleeping and waking its replicas goes.

    ``sleep``: whether idle replicas kept as warm holds are put to sleep; ``level``: vLLM's sleep
    level (1 keeps the weights in CPU memory, 2 drops them: waking reloads from disk); ``wake_s``:
    the planned wake-up time until one is measured.
    """

    kind: EngineKind
    port: int
    sleep: bool = True
    level: int = 1
    wake_s: float = DEFAULT_WAKE_S


_FIELDS = {"kind", "port", "sleep", "level", "wake_s"}


def parse_engine(entry: Any, *, where: str) -> EngineSpec:
    """An ``engine`` catalog entry: ``{kind: vllm|sglang, port, sleep, level, wake_s}``;
    :class:`InvalidInput` names the field at fault."""
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where} must be a mapping with 'kind', got {type(entry).__name__}")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise InvalidInput(
            f"{where} has unknown fields {sorted(unknown)}; known: {sorted(_FIELDS)}"
        )
    kind = entry.get("kind")
    if kind not in ENGINE_KINDS:
        raise InvalidInput(f"{where} kind must be one of {list(ENGINE_KINDS)}, got {kind!r}")
    port = entry.get("port", DEFAULT_PORT[kind])
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidInput(f"{where} port must be an integer in 1..65535, got {port!r}")
    sleep = entry.get("sleep", True)
    if not isinstance(sleep, bool):
        raise InvalidInput(f"{where} sleep must be true or false, got {sleep!r}")
    level = entry.get("level", 1)
    if level not in (1, 2) or isinstance(level, bool):
        raise InvalidInput(f"{where} level must be 1 or 2, got {level!r}")
    wake_s = entry.get("wake_s", DEFAULT_WAKE_S)
    if isinstance(wake_s, bool) or not isinstance(wake_s, int | float) or not wake_s > 0:
        raise InvalidInput(f"{where} wake_s must be a number of seconds > 0, got {wake_s!r}")
    return EngineSpec(kind=kind, port=port, sleep=sleep, level=level, wake_s=float(wake_s))
