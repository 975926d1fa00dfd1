"""The agent's event stream: loads, evictions, pressure and leases, to listeners and Watch calls.

Owns the delivery of each event to the in-process listeners (synchronously, in the publishing
thread: metrics) and to the Watch subscribers' queues (on the event loop they live on, posted there
from worker threads), and the log line of each event. A subscriber that stops reading loses events
rather than stalling the agent. It must not decide when events happen or change any holding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from common.ids import ModelId
from common.tiers import Tier
from protos import gpu_agent_pb2 as pb
from protos.tiers import agent_tier

log = logging.getLogger(__name__)

EventListener = Callable[[int, ModelId, Tier | None, int, str, float], None]
"""(kind, model_id, tier, nbytes, reason, duration_s) of one agent event; ``kind`` is a
``pb.Event.Kind`` value and ``tier`` is ``None`` for events about no tier in particular."""

SUBSCRIBER_QUEUE = 10_000
_LOGGED_AT_INFO = frozenset(
    {pb.Event.KIND_LOADED, pb.Event.KIND_EVICTED, pb.Event.KIND_LOAD_FAILED}
)


def timestamp(unix_s: float) -> Timestamp:
    """A proto timestamp of wall-clock seconds."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int(unix_s * 1e9))
    return stamp


class EventBus:
    """Publishes agent events; ``wall_clock`` stamps them."""

    def __init__(self, *, wall_clock: Callable[[], float]) -> None:
        self._wall = wall_clock
        self._subscribers: set[asyncio.Queue[pb.Event]] = set()
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that subscribers live on (events from threads are posted to it)."""
        self._loop = loop

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener`` for every event, synchronously in the publishing thread."""
        self._listeners.append(listener)

    async def subscribe(self, model_ids: Sequence[str] = ()) -> AsyncIterator[pb.Event]:
        """Events from now on (optionally only for ``model_ids``) until the consumer stops."""
        queue: asyncio.Queue[pb.Event] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        wanted = set(model_ids)
        self._subscribers.add(queue)
        try:
            while True:
                event = await queue.get()
                if not wanted or event.model_id in wanted:
                    yield event
        finally:
            self._subscribers.discard(queue)

    def publish(
        self,
        kind: int,
        model_id: ModelId,
        *,
        tier: Tier | None = None,
        nbytes: int = 0,
        reason: str = "",
        duration_s: float = 0.0,
    ) -> None:
        """Deliver one event; safe to call from any thread."""
        for listener in self._listeners:
            listener(kind, model_id, tier, nbytes, reason, duration_s)
        name = pb.Event.Kind.Name(kind)  # type: ignore[arg-type]
        if kind in _LOGGED_AT_INFO:
            log.info(
                "gpu agent event",
                extra={
                    "event": name,
                    "model": model_id,
                    "tier": tier.label if tier is not None else "",
                    "bytes": nbytes,
                    "reason": reason,
                    "duration_s": round(duration_s, 4),
                },
            )
        else:
            log.debug("gpu agent event %s %s %s", name, model_id, reason)
        loop = self._loop
        if loop is None or not self._subscribers:
            return
        event = pb.Event(
            kind=kind,  # type: ignore[arg-type]
            model_id=model_id,
            tier=agent_tier(tier),
            bytes=nbytes,
            reason=reason,
            time=timestamp(self._wall()),
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
