"""Per-model serialisation of the agent's operations, with no lock left behind.

Owns :class:`ModelLocks`: one :class:`asyncio.Lock` per model id while a call holds or waits for
it, dropped when the last one leaves, so a stream of requests for ever-new ids (a client that
misbehaves, a fuzzer) does not grow the table for ever. It must not know what the calls do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from common.ids import ModelId


@dataclass(slots=True)
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    """Calls holding or waiting for the lock."""


class ModelLocks:
    """Locks by model id, used on one event loop."""

    def __init__(self) -> None:
        self._entries: dict[ModelId, _Entry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, model_id: ModelId) -> AsyncIterator[None]:
        """Hold ``model_id``'s lock for the block (waiting for the calls ahead)."""
        entry = self._entries.get(model_id)
        if entry is None:
            entry = self._entries[model_id] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(model_id) is entry:
                del self._entries[model_id]

    def __len__(self) -> int:
        """The model ids with a lock now (held or waited for)."""
        return len(self._entries)
