"""Fixtures of the control-API tests: a real gRPC server on 127.0.0.1:0 in a background thread.

The server runs on its own event loop in a thread, so that synchronous callers (the CLI in a
subprocess, the sync client) and ``grpc.aio`` clients in the test's loop can both talk to it. The
daemon side is a :class:`StaticDaemonView` (the documented in-memory view for tests) and the store
a :class:`MemoryControlStore` (ConfigMap-backed tests are in ``test_store_k8s.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pytest

from common.ids import ModelId, RequestId
from forecaster.types import Forecast
from prewarm.control.config import ControlConfig
from prewarm.control.service import ControlServer
from prewarm.control.store import ControlStore, MemoryControlStore
from prewarm.control.view import StaticDaemonView

T = TypeVar("T")

WRITE_TOKEN = "w" * 8 + "-write-token-0123456789"
READ_TOKEN = "r" * 8 + "-read-token-0123456789"


@dataclass
class Clock:
    """A clock tests can move: real time plus ``offset_s`` (so the CLI's wall clock agrees)."""

    offset_s: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


def make_forecast(
    model: str,
    *,
    start_s: float,
    step_s: float = 60.0,
    counts: list[float] | None = None,
    p_active: list[float] | None = None,
    quantiles: tuple[float, ...] = (0.5, 0.9),
) -> Forecast:
    """A small valid forecast: ``counts`` per step at the median, x1.5 at higher levels."""
    mean = np.array(counts if counts is not None else [6.0, 12.0, 30.0, 60.0], dtype=np.float64)
    values = np.vstack([mean * (1.0 + 0.5 * i) for i in range(len(quantiles))])
    active = np.array(
        p_active if p_active is not None else [min(1.0, c / 10.0) for c in mean],
        dtype=np.float64,
    )
    return Forecast(
        model=ModelId(model),
        start_s=start_s,
        step_s=step_s,
        mean=mean,
        quantiles=quantiles,
        values=values,
        p_active=active,
        method="test-seasonal",
    )


def control_config(**overrides: Any) -> ControlConfig:
    """A ControlConfig for tests: port 0 on loopback, a write and a read token, short deadlines."""
    base: dict[str, Any] = {
        "listen_address": "127.0.0.1:0",
        "max_call_s": 5.0,
        "auth": {
            "mode": "token",
            "tokens": [
                {"name": "oncall", "scope": "write", "token": WRITE_TOKEN},
                {"name": "dashboards", "scope": "read", "token": READ_TOKEN},
            ],
        },
        "keda": {"stream_interval_s": 0.05},
    }
    base.update(overrides)
    return ControlConfig.model_validate(base)


@dataclass
class RunningServer:
    """A started :class:`ControlServer` on a background loop, and what it reads."""

    server: ControlServer
    view: StaticDaemonView
    store: ControlStore
    clock: Clock
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    ids: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def state(self) -> Any:
        """The stored control state (read through the store, on the server's loop)."""
        return self.run(self.store.load())


def start_server(
    *,
    config: ControlConfig | None = None,
    view: StaticDaemonView | None = None,
    store: ControlStore | None = None,
    clock: Clock | None = None,
    model_bytes: Callable[[ModelId], int | None] | None = None,
) -> RunningServer:
    """Start a :class:`ControlServer` in a thread with its own event loop."""
    clock = clock or Clock()
    view = view or StaticDaemonView(models={ModelId("llama-70b"), ModelId("mistral-7b")})
    store = store or MemoryControlStore(clock=clock)
    counter = itertools.count(1)
    ids: list[str] = []

    def new_id() -> RequestId:
        value = RequestId(f"req-{next(counter):016x}")
        ids.append(value)
        return value

    loop = asyncio.new_event_loop()
    server = ControlServer(
        config=config or control_config(),
        store=store,
        view=view,
        clock=clock,
        model_bytes=model_bytes,
        new_id=new_id,
    )
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="control-server", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("control server did not start within 30 s")
    return RunningServer(
        server=server, view=view, store=store, clock=clock, loop=loop, thread=thread, ids=ids
    )


def stop_server(running: RunningServer) -> None:
    """Stop the server, its loop and its thread."""
    running.run(running.server.stop(0.5))
    running.loop.call_soon_threadsafe(running.loop.stop)
    running.thread.join(10)
    running.loop.close()


@pytest.fixture
def running() -> Iterator[RunningServer]:
    """A control server with two known models (llama-70b, mistral-7b), no forecasts, no plan."""
    handle = start_server()
    try:
        yield handle
    finally:
        stop_server(handle)
