"""Leader election with a ``coordination.k8s.io/v1`` Lease, so that of several replicas one acts.

Owns: reading, acquiring, renewing and releasing one Lease object. Must not: decide anything about
plans. The decision itself (:func:`decide`) is a pure function of the Lease as read and "now"; the
I/O around it goes through the Kubernetes client passed to :class:`LeaseElector`.

Semantics follow client-go's leaderelection: a holder is live while
``renewTime + leaseDurationSeconds > now``; anyone may take over an expired or released Lease;
every write carries the ``resourceVersion`` that was read, so two candidates racing for an expired
Lease cannot both win (the loser gets 409 Conflict and stays a follower).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes.client import CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What matters of a Lease as read from the API server."""

    holder: str | None
    renew_time_s: float | None
    duration_s: int
    transitions: int
    resource_version: str | None


class Decision(enum.Enum):
    """What a candidate should do with the Lease."""

    CREATE = "create"  # no Lease exists yet
    RENEW = "renew"  # we hold it
    TAKE_OVER = "take_over"  # expired or released by another holder
    FOLLOW = "follow"  # another holder is live


def decide(lease: LeaseState | None, *, identity: str, now_s: float) -> Decision:
    """Decide what ``identity`` should do with ``lease`` at ``now_s`` (pure)."""
    if lease is None:
        return Decision.CREATE
    if lease.holder == identity:
        return Decision.RENEW
    if not lease.holder or lease.renew_time_s is None:
        return Decision.TAKE_OVER
    if lease.renew_time_s + lease.duration_s <= now_s:
        return Decision.TAKE_OVER
    return Decision.FOLLOW


def _to_datetime(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def _state_of(lease: V1Lease) -> LeaseState:
    spec = lease.spec or V1LeaseSpec()
    renew = spec.renew_time
    return LeaseState(
        holder=spec.holder_identity or None,
        renew_time_s=renew.timestamp() if isinstance(renew, datetime) else None,
        duration_s=int(spec.lease_duration_seconds or 0),
        transitions=int(spec.lease_transitions or 0),
        resource_version=lease.metadata.resource_version if lease.metadata else None,
    )


class LeaseElector:
    """Acquires and renews one Lease for ``identity``; :attr:`is_leader` says whether we hold it.

    ``api`` is a :class:`CoordinationV1Api` (its calls are blocking and run in a worker thread);
    ``clock`` returns epoch seconds. ``lease_duration_s`` bounds failover time: a crashed leader is
    replaced at most that long after its last renewal (plus one ``retry_period_s``).
    """

    def __init__(
        self,
        api: CoordinationV1Api,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: int = 15,
        retry_period_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retry_period_s >= lease_duration_s:
            raise ValueError("retry_period_s must be shorter than lease_duration_s")
        self._api = api
        self._namespace = namespace
        self._name = name
        self._identity = identity
        self._duration_s = lease_duration_s
        self._retry_period_s = retry_period_s
        self._clock = clock
        self._leader_until_s = 0.0

    @property
    def identity(self) -> str:
        """Who this candidate is (usually the pod name)."""
        return self._identity

    @property
    def is_leader(self) -> bool:
        """True while our last successful renewal has not expired by our own clock."""
        return self._clock() < self._leader_until_s

    async def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, then create, renew or take it over if we may; True if leader.

        API errors other than 404/409 are logged and count as "not leader this round" (we must
        not act on a Lease we could not confirm).
        """
        try:
            won = await asyncio.to_thread(self._round)
        except ApiException as error:
            log.warning("lease round failed", status=error.status, reason=error.reason)
            won = False
        except OSError as error:  # connection refused/reset: API server down or restarting
            log.warning("lease round failed", error=str(error))
            won = False
        if not won:
            self._leader_until_s = 0.0
        return won

    def _round(self) -> bool:
        now_s = self._clock()
        try:
            current: V1Lease | None = self._api.read_namespaced_lease(self._name, self._namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            current = None
        state = _state_of(current) if current is not None else None
        decision = decide(state, identity=self._identity, now_s=now_s)
        if decision is Decision.FOLLOW:
            return False
        transitions = state.transitions if state else 0
        if decision is Decision.TAKE_OVER:
            transitions += 1
        acquire_s = now_s if decision is not Decision.RENEW else None
        body = self._lease_body(
            now_s=now_s,
            acquire_s=acquire_s,
            transitions=transitions,
            resource_version=state.resource_version if state else None,
            previous=current,
        )
        try:
            if decision is Decision.CREATE:
                self._api.create_namespaced_lease(self._namespace, body)
            else:
                # replace (PUT) with the resourceVersion we read: optimistic concurrency.
                self._api.replace_namespaced_lease(self._name, self._namespace, body)
        except ApiException as error:
            if error.status in (409, 422):  # someone else won the race (or created it first)
                return False
            raise
        if decision is not Decision.RENEW:
            log.info("acquired leadership", lease=self._name, identity=self._identity)
        self._leader_until_s = now_s + self._duration_s
        return True

    def _lease_body(
        self,
        *,
        now_s: float,
        acquire_s: float | None,
        transitions: int,
        resource_version: str | None,
        previous: V1Lease | None,
    ) -> V1Lease:
        acquire_time: Any = _to_datetime(acquire_s) if acquire_s is not None else None
        if acquire_time is None and previous is not None and previous.spec is not None:
            acquire_time = previous.spec.acquire_time
        return V1Lease(
            metadata=V1ObjectMeta(
                name=self._name,
                namespace=self._namespace,
                resource_version=resource_version,
                labels={"app.kubernetes.io/managed-by": "prewarm"},
            ),
            spec=V1LeaseSpec(
                holder_identity=self._identity,
                lease_duration_seconds=self._duration_s,
                acquire_time=acquire_time,
                renew_time=_to_datetime(now_s),
                lease_transitions=transitions,
            ),
        )

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once, not after expiry.

        Like client-go, a released Lease keeps its object but has no holder and a 1 s duration.
        Failures are logged; the Lease then simply expires.
        """
        if not self.is_leader:
            return
        self._leader_until_s = 0.0

        def _release() -> None:
            current = self._api.read_namespaced_lease(self._name, self._namespace)
            state = _state_of(current)
            if state.holder != self._identity or current.spec is None:
                return
            current.spec.holder_identity = None
            current.spec.lease_duration_seconds = 1
            current.spec.renew_time = _to_datetime(self._clock())
            self._api.replace_namespaced_lease(self._name, self._namespace, current)

        try:
            await asyncio.to_thread(_release)
        except (ApiException, OSError) as error:
            log.warning("could not release lease; it will expire", error=str(error))

    async def run(self, stop: asyncio.Event) -> None:
        """Keep trying/renewing every ``retry_period_s`` until ``stop`` is set, then release."""
        while not stop.is_set():
            await self.try_acquire_or_renew()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._retry_period_s)
            except TimeoutError:
                continue
        await self.release()
