"""Applies a whole :class:`planner.actions.WarmPlan`: the actuator's entry point for the daemon.

Owns the order and isolation of the parts: node capacity first (nodes take longest), then image
pre-pulls (they need the nodes), then replica floors, then GPU agent calls. Each part reconciles
the cluster to the plan (creating what is planned, releasing what no longer is) and a failure in
one part is recorded in the report without stopping the others; the next tick retries.

Must not: decide anything (the plan is applied as given), or read the clock (``now_s`` is passed).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from actuator.agents import AgentActuator, AgentResult
from actuator.capacity import NodeCapacityActuator
from actuator.capacity_result import CapacityResult
from actuator.config import ActuatorConfig
from actuator.engines import EngineResult, Engines
from actuator.floors import FloorResult, Problems, ReplicaFloors
from actuator.kube import KubeClient
from actuator.prepull import ImagePrepuller, PrepullStatus
from common.errors import PrewarmError
from planner.actions import (
    Action,
    ActionResult,
    EngineSleep,
    Evict,
    ImagePrepull,
    NodeCapacity,
    Outcome,
    Preload,
    ReplicaFloor,
    WarmPlan,
)

__all__ = [
    "ActionResult",
    "ActuationReport",
    "Actuator",
    "Outcome",
    "agent_action_result",
    "results_per_action",
]

_log = logging.getLogger(__name__)


@dataclass
class ActuationReport:
    """What one :meth:`Actuator.apply` did, part by part; ``errors`` maps a part to its failure."""

    dry_run: bool
    capacity: list[CapacityResult] = field(default_factory=list)
    prepulls: list[PrepullStatus] = field(default_factory=list)
    floors: list[FloorResult] = field(default_factory=list)
    agents: list[AgentResult] = field(default_factory=list)
    engines: list[EngineResult] = field(default_factory=list)
    errors: dict[str, PrewarmError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        parts: list[CapacityResult | PrepullStatus | FloorResult]
        parts = [*self.capacity, *self.prepulls, *self.floors]
        return (
            not self.errors
            and all(part.error is None for part in parts)
            and all(result.ok for result in self.agents)
        )


class Actuator:
    """The Kubernetes parts share one :class:`KubeClient`; GPU agents are optional (no agents =
    Preload/Evict actions are reported as skipped). ``workload_problems``: per model, why its
    workload is unresolved (its floor then fails with that error; see
    :mod:`actuator.workloads`)."""

    def __init__(
        self,
        kube: KubeClient,
        config: ActuatorConfig,
        *,
        agents: AgentActuator | None = None,
        engines: Engines | None = None,
        workload_problems: Problems | None = None,
    ) -> None:
        self.config = config
        self.capacity = NodeCapacityActuator(kube, config)
        self.prepuller = ImagePrepuller(kube, config)
        self.floors = ReplicaFloors(kube, config, problems=workload_problems)
        self.agents = agents
        self.engines = engines

    def apply_cluster(self, plan: WarmPlan, *, dry_run: bool = False) -> ActuationReport:
        """Reconcile node capacity, pre-pulls and floors with ``plan`` (blocking I/O)."""
        dry_run = dry_run or self.config.dry_run
        report = ActuationReport(dry_run=dry_run)
        try:
            report.capacity = self.capacity.reconcile(plan.of_type(NodeCapacity), dry_run=dry_run)
        except PrewarmError as error:
            report.errors["capacity"] = error
        try:
            report.prepulls = self.prepuller.reconcile(
                plan.of_type(ImagePrepull), now_s=plan.now_s, dry_run=dry_run
            )
        except PrewarmError as error:
            report.errors["prepull"] = error
        try:
            report.floors = self.floors.reconcile(
                plan.of_type(ReplicaFloor), now_s=plan.now_s, dry_run=dry_run
            )
        except PrewarmError as error:
            report.errors["floors"] = error
        sleeps = plan.of_type(EngineSleep)
        if self.engines is not None and sleeps:
            report.engines = self.engines.apply(sleeps, dry_run=dry_run)
        for part, failure in report.errors.items():
            _log.warning("actuator: %s failed this tick (retried next tick): %s", part, failure)
        return report

    async def apply_agents(self, plan: WarmPlan, report: ActuationReport) -> ActuationReport:
        """Send the plan's Evict/Preload actions to the GPU agents; results go into ``report``."""
        preloads, evicts = plan.of_type(Preload), plan.of_type(Evict)
        if self.agents is None:
            if preloads or evicts:
                _log.info("no GPU agent client configured: %d agent actions skipped",
                          len(preloads) + len(evicts))  # fmt: skip
            return report
        report.agents = await self.agents.apply(
            preloads, evicts, now_s=plan.now_s, dry_run=report.dry_run
        )
        return report

    async def apply(self, plan: WarmPlan, *, dry_run: bool = False) -> list[ActionResult]:
        """Apply ``plan`` (cluster parts in a worker thread, then agents): one result per action.

        Never raises for a failed action; each failure is an ``error`` result, retried next tick.
        """
        report = await asyncio.to_thread(self.apply_cluster, plan, dry_run=dry_run)
        report = await self.apply_agents(plan, report)
        return results_per_action(plan, report)


def results_per_action(plan: WarmPlan, report: ActuationReport) -> list[ActionResult]:
    """One :class:`ActionResult` per action of ``plan``, in plan order, from ``report``."""
    done: Outcome = "dry_run" if report.dry_run else "ok"
    capacity = {result.pool: result for result in report.capacity}
    floors = {result.workload: result for result in report.floors}
    agents = {id(result.action): result for result in report.agents}
    engines = {id(result.action): result for result in report.engines}
    prepulls = {(status.pool, status.image): status for status in report.prepulls}
    results: list[ActionResult] = []
    for action in plan.actions:
        if isinstance(action, NodeCapacity):
            if "capacity" in report.errors:
                results.append(ActionResult(action, "error", str(report.errors["capacity"])))
            elif action.pool in capacity:
                applied = capacity[action.pool]
                if applied.error is not None:
                    results.append(ActionResult(action, "error", str(applied.error)))
                else:
                    detail = f"{applied.target} at {applied.replicas}"
                    if applied.notes:  # e.g. what a NodePool limit cut
                        detail += f" ({applied.notes})"
                    results.append(ActionResult(action, done, detail))
            elif action.gpus <= 0:
                results.append(ActionResult(action, done, "nothing to hold"))
            else:
                results.append(ActionResult(action, "skipped", "Cluster API is not installed"))
        elif isinstance(action, ImagePrepull):
            status = prepulls.get((action.pool, action.image))
            if "prepull" in report.errors or status is None or status.error is not None:
                error = report.errors.get("prepull") or (status and status.error)
                results.append(ActionResult(action, "error", str(error or "not stepped")))
            elif status.failed or status.expired:
                detail = f"failed on {sorted(status.failed)}, missed on {sorted(status.pending)}"
                results.append(ActionResult(action, "error", detail))
            else:
                detail = f"{len(status.succeeded)} node(s) done, {len(status.pending)} pulling"
                results.append(ActionResult(action, done, detail))
        elif isinstance(action, ReplicaFloor):
            floor = floors.get(action.workload)
            if "floors" in report.errors:
                results.append(ActionResult(action, "error", str(report.errors["floors"])))
            elif floor is None:
                results.append(ActionResult(action, done, "expired: restored"))
            elif floor.error is not None:
                results.append(ActionResult(action, "error", str(floor.error)))
            else:
                results.append(
                    ActionResult(action, done, f"{floor.via} {floor.target} >= {floor.value}")
                )
        elif isinstance(action, EngineSleep):
            results.append(_engine_result(action, engines.get(id(action)), done))
        else:
            results.append(agent_action_result(action, agents.get(id(action))))
    return results


def _engine_result(action: EngineSleep, engine: EngineResult | None, done: Outcome) -> ActionResult:
    """The result of an EngineSleep from what the engines answered (None: no engine client)."""
    if engine is None:
        return ActionResult(action, "skipped", "no engine client configured")
    state = "asleep" if action.asleep else "awake"
    detail = f"{engine.changed} pod(s) made {state}, {engine.already} already"
    if engine.errors:
        return ActionResult(action, "error", f"{detail}; {'; '.join(engine.errors)}")
    return ActionResult(action, done, detail)


def agent_action_result(action: Action, agent: AgentResult | None) -> ActionResult:
    """The :class:`ActionResult` of a Preload/Evict from what the agent answered (None: no
    agent client was configured, so the action was skipped)."""
    if agent is None:
        return ActionResult(action, "skipped", "no GPU agent client configured")
    if not agent.ok:
        return ActionResult(action, "error", agent.detail)
    return ActionResult(action, "dry_run" if agent.dry_run else "ok", agent.detail)
