"""Leader election with a ``coordination.k8s.io/v1`` Lease, so that of several replicas one acts.

Owns: reading, acquiring, renewing and releasing one Lease object. Must not: decide anything about
plans. The decision itself (:func:`decide`) is a pure function of the Lease as read and "now"; the
I/O goes through the actuator's :class:`KubeClient` (raw REST with retries and typed errors).

Semantics follow client-go's leaderelection: a holder is live while
``renewTime + leaseDurationSeconds > now``; anyone may take over an expired or released Lease;
every update carries the ``resourceVersion`` that was read, so two candidates racing for an expired
Lease cannot both win (the loser gets 409 Conflict and stays a follower).

Quirk: Lease times are ``MicroTime``, which the API server parses only as
``2006-01-02T15:04:05.000000Z07:00``. The typed Python client re-serialises datetimes as
``+00:00`` without a fraction and gets 400 Bad Request, so bodies are plain dicts sent over REST.
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

from actuator.kube import Conflict, KubeClient, Obj, Resource
from common.errors import FailedPrecondition, PrewarmError

log = structlog.get_logger(__name__)

LEASES = Resource("coordination.k8s.io/v1", "leases")
ADDRESS_ANNOTATION = "prewarm.io/control-address"
"""The leader writes its control API address here, so followers can send callers to it."""


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


def micro_time(epoch_s: float) -> str:
    """``epoch_s`` as a Kubernetes MicroTime string."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def lease_state(obj: Obj) -> LeaseState:
    """The decision-relevant fields of a Lease object as the API returns it."""
    spec = obj.get("spec") or {}
    return LeaseState(
        holder=spec.get("holderIdentity") or None,
        renew_time_s=_parse_time(spec.get("renewTime")),
        duration_s=int(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
    )


class NotLeader(FailedPrecondition):
    """A write was attempted by a replica that no longer holds the leader Lease."""


class LeaseElector:
    """Acquires and renews one Lease for ``identity``; :attr:`is_leader` says whether we hold it.

    ``kube`` should retry little (a round must fit in ``retry_period_s``); ``clock`` returns epoch
    seconds. ``lease_duration_s`` bounds failover: a crashed leader is replaced at most that long
    after its last renewal, plus one ``retry_period_s``.

    Rounds run every ``retry_period_s`` while they succeed (leading or following). Rounds that
    fail (API server unreachable, 403) back off: the wait doubles after each failure up to
    :attr:`max_retry_period_s` (the lease duration or 8 retry periods, the shorter), back to
    ``retry_period_s`` after the next success; so after an outage a replica leads again within
    one ``max_retry_period_s``. A failure is logged once (again when its error changes), the end
    of the failures with their count.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: int = 15,
        retry_period_s: float = 2.0,
        address: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retry_period_s >= lease_duration_s:
            raise ValueError("retry_period_s must be shorter than lease_duration_s")
        self._kube = kube
        self._namespace = namespace
        self._name = name
        self._identity = identity
        self._duration_s = lease_duration_s
        self._retry_period_s = retry_period_s
        self._clock = clock
        self._address = address
        self._leader_until_s = 0.0
        self._leader_address: str | None = None
        self.max_retry_period_s = min(float(lease_duration_s), 8 * retry_period_s)
        self._failures = 0
        self._failing_since_s = 0.0
        self._last_error = ""

    @property
    def identity(self) -> str:
        """Who this candidate is (usually the pod name)."""
        return self._identity

    @property
    def leader_address(self) -> str | None:
        """The control API address the current holder advertised (ours when we lead)."""
        return self._address if self.is_leader else self._leader_address

    @property
    def is_leader(self) -> bool:
        """True while our last successful renewal has not expired by our own clock."""
        return self._clock() < self._leader_until_s

    def fence(self) -> None:
        """Raise :class:`NotLeader` unless this replica may still write: its last renewal is
        younger than the lease duration minus one retry period, so an old leader stops writing
        before a standby can take the Lease over (checked before every write attempt)."""
        if self._clock() >= self._leader_until_s - self._retry_period_s:
            raise NotLeader(
                f"{self._identity} no longer holds Lease {self._namespace}/{self._name}: the "
                "write is refused (the new leader applies the plan)"
            )

    async def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, then create, renew or take it over if we may; True if leader.

        Any failure (API server down, 5xx after retries, 403) counts as "not leader this round":
        we must not act on a Lease we could not confirm.
        """
        try:
            won = await asyncio.to_thread(self._round)
        except PrewarmError as error:
            self._failed(str(error))
            won = False
        else:
            self._succeeded()
        if not won:
            self._leader_until_s = 0.0
        return won

    def next_wait_s(self) -> float:
        """How long to wait before the next round: ``retry_period_s`` after a round that
        succeeded; after ``n`` failed rounds in a row, ``retry_period_s * 2**(n-1)`` capped at
        :attr:`max_retry_period_s`."""
        if self._failures == 0:
            return self._retry_period_s
        doublings = min(self._failures - 1, 16)  # far past any cap; 2.0**1024 would overflow
        return min(self._retry_period_s * 2.0**doublings, self.max_retry_period_s)

    def _failed(self, error: str) -> None:
        self._failures += 1
        if self._failures == 1:
            self._failing_since_s = self._clock()
        fields = {"failures": self._failures, "next_try_s": round(self.next_wait_s(), 1)}
        if error != self._last_error:
            log.warning("lease round failed; retrying with backoff", error=error, **fields)
        else:
            log.debug("lease round failed again", **fields)
        self._last_error = error

    def _succeeded(self) -> None:
        if self._failures:
            log.info(
                "lease rounds succeed again",
                failures=self._failures,
                failing_for_s=round(self._clock() - self._failing_since_s, 1),
            )
        self._failures = 0
        self._last_error = ""

    def _round(self) -> bool:
        now_s = self._clock()
        path = LEASES.path(self._namespace, self._name)
        current = self._kube.get(path)
        state = lease_state(current) if current is not None else None
        if current is not None:
            annotations = (current.get("metadata") or {}).get("annotations") or {}
            self._leader_address = annotations.get(ADDRESS_ANNOTATION)
        decision = decide(state, identity=self._identity, now_s=now_s)
        if decision is Decision.FOLLOW:
            return False
        spec: dict[str, Any] = {
            "holderIdentity": self._identity,
            "leaseDurationSeconds": self._duration_s,
            "renewTime": micro_time(now_s),
        }
        if decision is not Decision.RENEW:
            spec["acquireTime"] = micro_time(now_s)
            spec["leaseTransitions"] = (state.transitions + 1) if state is not None else 0
        metadata: dict[str, Any] = {"annotations": {ADDRESS_ANNOTATION: self._address}}
        try:
            if state is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self._name,
                        "labels": {"app.kubernetes.io/managed-by": "prewarm"},
                        **metadata,
                    },
                    "spec": spec,
                }
                self._kube.create(LEASES.path(self._namespace), body, dry_run=False)
            else:
                # A merge patch carrying the resourceVersion we read: optimistic concurrency.
                self._kube.merge_patch(
                    path,
                    {"metadata": metadata, "spec": spec},
                    field_manager="prewarm-leader",
                    dry_run=False,
                    resource_version=state.resource_version,
                )
        except Conflict:
            return False  # another candidate won the race (created or updated it first)
        if decision is not Decision.RENEW:
            log.info("acquired leadership", lease=self._name, identity=self._identity)
        self._leader_until_s = now_s + self._duration_s
        return True

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once, not after expiry.

        Like client-go, a released Lease keeps its object but has no holder and a 1 s duration.
        Failures are logged; the Lease then simply expires.
        """
        if not self.is_leader:
            return
        self._leader_until_s = 0.0

        def _release() -> None:
            path = LEASES.path(self._namespace, self._name)
            current = self._kube.get(path)
            if current is None:
                return
            state = lease_state(current)
            if state.holder != self._identity:
                return
            self._kube.merge_patch(
                path,
                {
                    "spec": {
                        "holderIdentity": None,
                        "leaseDurationSeconds": 1,
                        "renewTime": micro_time(self._clock()),
                    }
                },
                field_manager="prewarm-leader",
                dry_run=False,
                resource_version=state.resource_version,
            )

        try:
            await asyncio.to_thread(_release)
        except PrewarmError as error:
            log.warning("could not release lease; it will expire", error=str(error))

    async def run(self, stop: asyncio.Event) -> None:
        """Keep trying/renewing every ``retry_period_s`` (backing off while rounds fail, see the
        class) until ``stop`` is set, then release."""
        while not stop.is_set():
            await self.try_acquire_or_renew()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.next_wait_s())
            except TimeoutError:
                continue
        await self.release()
