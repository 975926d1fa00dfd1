"""Durable storage of the control state (manual requests, pins, pauses) in the cluster.

Owns: reading and writing one ConfigMap (``control.namespace`` / ``control.configmap_name``, key
``state.json``) with optimistic concurrency, so requests survive a daemon restart and a leader
change, and two writers never lose each other's update. Must not: validate requests (the change
functions from :mod:`prewarm.control.overrides` do), or decide anything.

Every write is read-modify-write: read the ConfigMap and its ``resourceVersion``, apply a pure
change to the state (pruned of what has expired), write it back carrying that ``resourceVersion``.
The API server refuses a write whose ``resourceVersion`` is stale with 409 Conflict; then we
re-read and re-apply, up to ``max_attempts`` times. A change that raises writes nothing, so a
refused request leaves no partial state behind.

:class:`MemoryControlStore` keeps the state in memory: for tests and demos only (it survives
nothing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import structlog
import urllib3.exceptions
from kubernetes.client import CoreV1Api, V1ConfigMap, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from common.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidInput,
    PermissionDenied,
    ResourceExhausted,
    TemporaryError,
)
from prewarm.control.document import dumps, loads
from prewarm.cycle.manual import ControlState, prune

log = structlog.get_logger(__name__)

T = TypeVar("T")
Change = Callable[[ControlState], tuple[ControlState, T]]
"""A pure change: the current state (pruned) in, the new state and a result out. May raise."""

STATE_KEY = "state.json"
"""The ConfigMap data key holding the JSON document."""

MANAGED_BY = {"app.kubernetes.io/managed-by": "prewarm", "app.kubernetes.io/component": "control"}


class ControlStore(Protocol):
    """Where the control state lives. Both methods may raise :class:`TemporaryError` (retry)."""

    async def load(self, *, max_age_s: float = 0.0) -> ControlState:
        """The stored state, pruned of what has expired. ``max_age_s`` > 0 allows an answer
        that old from a cache (this process's own writes are always in it).
        """
        ...

    async def update(self, change: Change[T]) -> T:
        """Apply ``change`` atomically and return its result; nothing is written if it raises."""
        ...


class MemoryControlStore:
    """A :class:`ControlStore` in process memory. For tests and demos only: it survives nothing."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._state = ControlState()
        self._clock = clock
        self._lock = asyncio.Lock()

    async def load(self, *, max_age_s: float = 0.0) -> ControlState:
        """See :meth:`ControlStore.load` (always current: there is nothing to cache)."""
        return prune(self._state, self._clock())

    async def update(self, change: Change[T]) -> T:
        """See :meth:`ControlStore.update`."""
        async with self._lock:
            now_s = self._clock()
            new_state, result = change(prune(self._state, now_s))
            self._state = prune(new_state, now_s)
            return result


def _api_error(error: ApiException, *, what: str, namespace: str) -> Exception:
    """The prewarm error kind for a failed ConfigMap call (other than 409, which is retried)."""
    status = int(error.status or 0)
    if status in (401, 403):
        return PermissionDenied(
            f"the daemon may not {what} ConfigMaps in namespace {namespace} ({status}); "
            "check the Role/RoleBinding of its service account (the chart creates them)"
        )
    if status == 404:
        return FailedPrecondition(
            f"namespace {namespace} does not exist; create it or set control.namespace"
        )
    if status in (413, 422):
        return ResourceExhausted(
            f"the control state no longer fits in its ConfigMap ({status}: {error.reason}); "
            "cancel some requests"
        )
    return TemporaryError(
        f"the Kubernetes API failed to {what} the control ConfigMap ({status}: {error.reason}); "
        "retry shortly"
    )


class ConfigMapControlStore:
    """A :class:`ControlStore` in one ConfigMap, written with optimistic concurrency.

    ``core`` is the Kubernetes ``CoreV1Api`` (I/O boundary; tests pass one pointed at a real API
    server). Its blocking calls run in a worker thread, each bounded by ``request_timeout_s``.
    """

    def __init__(
        self,
        core: CoreV1Api,
        *,
        namespace: str,
        name: str = "prewarm-control",
        clock: Callable[[], float] = time.time,
        max_attempts: int = 8,
        request_timeout_s: float = 10.0,
    ) -> None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be >= 1, got {max_attempts}")
        self._core = core
        self._namespace = namespace
        self._name = name
        self._clock = clock
        self._max_attempts = max_attempts
        self._timeout_s = request_timeout_s
        # Serialises this process's writers; other processes are handled by resourceVersion.
        self._lock = asyncio.Lock()
        # (clock time, state) of the last read or write, for load(max_age_s=...).
        self._cache: tuple[float, ControlState] | None = None

    @property
    def location(self) -> str:
        """``namespace/name`` of the ConfigMap, for messages."""
        return f"{self._namespace}/{self._name}"

    async def load(self, *, max_age_s: float = 0.0) -> ControlState:
        """See :meth:`ControlStore.load`. The KEDA scaler passes ``max_age_s`` so that many
        ScaledObjects polling do not each GET the ConfigMap.
        """
        now_s = self._clock()
        if self._cache is not None and max_age_s > 0 and now_s - self._cache[0] <= max_age_s:
            return prune(self._cache[1], now_s)
        state, _, _ = await self._read()
        return prune(state, self._clock())

    async def update(self, change: Change[T]) -> T:
        """See :meth:`ControlStore.update`. Retries on 409 Conflict up to ``max_attempts`` times."""
        async with self._lock:
            for attempt in range(1, self._max_attempts + 1):
                state, resource_version, stored_text = await self._read()
                now_s = self._clock()
                new_state, result = change(prune(state, now_s))
                new_state = prune(new_state, now_s)
                text = dumps(new_state)
                if resource_version is not None and text == stored_text:
                    return result  # nothing changed: no write
                try:
                    await self._write(text, resource_version)
                except ApiException as error:
                    # 409: someone wrote since we read (replace), or created it first (create).
                    if error.status == 409:
                        log.info("control store conflict; retrying", attempt=attempt)
                        continue
                    raise _api_error(error, what="write", namespace=self._namespace) from error
                self._cache = (now_s, new_state)
                return result
        raise TemporaryError(
            f"the control ConfigMap {self.location} changed under every one of "
            f"{self._max_attempts} attempts (heavy concurrent writes); retry shortly"
        )

    async def _read(self) -> tuple[ControlState, str | None, str | None]:
        """State, resourceVersion (None: no ConfigMap yet) and the stored text."""
        try:
            config_map: V1ConfigMap = await asyncio.to_thread(
                self._core.read_namespaced_config_map,
                self._name,
                self._namespace,
                _request_timeout=self._timeout_s,
            )
        except ApiException as error:
            if error.status == 404:
                return ControlState(), None, None
            raise _api_error(error, what="read", namespace=self._namespace) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise TemporaryError(
                f"cannot reach the Kubernetes API to read {self.location}: {error}; retry shortly"
            ) from error
        resource_version = config_map.metadata.resource_version if config_map.metadata else None
        text = (config_map.data or {}).get(STATE_KEY)
        if not text:
            return ControlState(), resource_version or "", text
        try:
            state = loads(text)
        except InvalidInput as error:
            raise DataLoss(
                f"ConfigMap {self.location} key {STATE_KEY} is corrupt: {error}"
            ) from error
        self._cache = (self._clock(), state)
        return state, resource_version or "", text

    async def _write(self, text: str, resource_version: str | None) -> None:
        body = V1ConfigMap(
            metadata=V1ObjectMeta(
                name=self._name,
                namespace=self._namespace,
                labels=dict(MANAGED_BY),
                resource_version=resource_version or None,
            ),
            data={STATE_KEY: text},
        )

        def write() -> Any:
            if resource_version is None:
                return self._core.create_namespaced_config_map(
                    self._namespace, body, _request_timeout=self._timeout_s
                )
            return self._core.replace_namespaced_config_map(
                self._name, self._namespace, body, _request_timeout=self._timeout_s
            )

        try:
            await asyncio.to_thread(write)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise TemporaryError(
                f"cannot reach the Kubernetes API to write {self.location}: {error}; retry shortly"
            ) from error
