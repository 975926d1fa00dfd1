"""Applies plans where there is no cluster: GPU-agent actions for real, cluster actions dry.

Owns: sending the plan's Preload/Evict actions to a real GPU agent over gRPC (the actuator's
:class:`AgentActuator`), and reporting node capacity, pre-pulls and replica floors as ``dry_run``
(what the actuator would apply to a cluster). Must not: pretend a cluster action happened.
"""

from __future__ import annotations

from collections.abc import Sequence

from actuator.agents import AgentActuator
from actuator.apply import ActionResult, agent_action_result
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
        return [
            agent_action_result(action, by_action[id(action)])
            if isinstance(action, Preload | Evict)
            else ActionResult(action, "dry_run", "no cluster: not applied")
            for action in plan.actions
        ]
