"""Applies plans where there is no cluster: GPU-agent actions for real, cluster actions dry.

Owns: sending the plan's Preload/Evict actions to a real GPU agent over gRPC (the actuator's
:class:`AgentActuator`), and reporting node capacity, pre-pulls and replica floors as ``dry_run``
(what the actuator would apply to a cluster). Must not: pretend a cluster action happened.
"""

from __future__ import annotations

from collections.abc import Sequence

from actuator.agents import AgentActuator
from actuator.apply import ActionResult
from planner.actions import Evict, Preload, WarmPlan


class AgentOnlyApplier:
    """A ``PlanApplier`` for runs without Kubernetes (the demo, dashboards tests)."""

    def __init__(self, agents: AgentActuator) -> None:
        self._agents = agents

    async def apply(self, plan: WarmPlan, *, dry_run: bool) -> Sequence[ActionResult]:
        """One result per action: agent actions as the agent answered, the rest ``dry_run``."""
        agent_results = await self._agents.apply(
            plan.of_type(Preload), plan.of_type(Evict), now_s=plan.now_s, dry_run=dry_run
        )
        by_action = {id(result.action): result for result in agent_results}
        results: list[ActionResult] = []
        for action in plan.actions:
            found = by_action.get(id(action))
            if found is None:
                results.append(ActionResult(action, "dry_run", "no cluster: not applied"))
            elif not found.ok:
                results.append(ActionResult(action, "error", found.detail))
            else:
                results.append(
                    ActionResult(action, "dry_run" if found.dry_run else "ok", found.detail)
                )
        return results
