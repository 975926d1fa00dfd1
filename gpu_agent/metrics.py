"""The GPU agent's Prometheus metrics (the contract with ``dashboards/`` and the chart's alerts).

Owns: metric names, labels and units. Gauges of what is held and of GPU memory are read from
:meth:`Agent.status` at scrape time (a custom collector, so they are never stale); counters of
loads and evictions are fed by the agent's event listener. Must not: change agent state.

Eviction reasons are reduced to a small fixed set for the ``reason`` label (``requested``: an
Evict call; ``pressure``: other processes needed the memory; ``preload``: room for a more valuable
model); free text would make one series per message.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.tiers import Tier
from gpu_agent.agent import Agent
from protos import gpu_agent_pb2 as pb
from protos.tiers import tier_label


def eviction_reason(text: str) -> str:
    """The ``reason`` label of an eviction event's free-text reason."""
    lowered = text.lower()
    if lowered == "evict":
        return "requested"
    if "pressure" in lowered:
        return "pressure"
    if "needed for a preload" in lowered:
        return "preload"
    return "other"


class _StatusCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._agent.status()
        held = GaugeMetricFamily(
            "prewarm_agent_held_bytes", "Bytes of model weights held, by tier.", labels=["tier"]
        )
        capacity = GaugeMetricFamily(
            "prewarm_agent_capacity_bytes",
            "Bytes a tier may hold in total (held plus free space it may still grow into).",
            labels=["tier"],
        )
        models = GaugeMetricFamily(
            "prewarm_agent_held_models", "Models held, by tier.", labels=["tier"]
        )
        for usage in status.tiers:
            name = tier_label(usage.tier, default=str(usage.tier))
            held.add_metric([name], float(usage.used_bytes))
            capacity.add_metric([name], float(usage.capacity_bytes))
            models.add_metric([name], float(usage.models))
        free = GaugeMetricFamily(
            "prewarm_agent_gpu_free_bytes", "Free GPU memory (NVML).", labels=["gpu"]
        )
        others = GaugeMetricFamily(
            "prewarm_agent_gpu_other_used_bytes",
            "GPU memory used by processes other than the agent.",
            labels=["gpu"],
        )
        total = GaugeMetricFamily(
            "prewarm_agent_gpu_total_bytes", "GPU memory in total (NVML).", labels=["gpu"]
        )
        for gpu in status.gpus:
            free.add_metric([gpu.uuid], float(gpu.free_bytes))
            others.add_metric([gpu.uuid], float(gpu.other_processes_bytes))
            total.add_metric([gpu.uuid], float(gpu.total_bytes))
        yield held
        yield capacity
        yield models
        yield free
        yield others
        yield total
        yield GaugeMetricFamily(
            "prewarm_agent_headroom_bytes",
            "GPU memory always left free for inference processes.",
            value=float(self._agent.config.headroom_bytes),
        )
        yield GaugeMetricFamily(
            "prewarm_agent_gpu_available",
            "1 when the agent can use a GPU; 0 when it serves host tiers only.",
            value=1.0 if status.gpu_available else 0.0,
        )


class AgentMetrics:
    """Registers the agent's metrics in ``registry`` and listens to its events."""

    def __init__(self, agent: Agent, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_StatusCollector(agent))
        self.evictions = Counter(
            "prewarm_agent_evictions",
            "Models evicted from a tier, by tier and reason (requested, pressure, preload).",
            ["tier", "reason"],
            registry=self.registry,
        )
        self.loaded_bytes = Counter(
            "prewarm_agent_loaded_bytes",
            "Bytes loaded into a tier by preloads.",
            ["tier"],
            registry=self.registry,
        )
        self.load_failures = Counter(
            "prewarm_agent_load_failures", "Preloads that failed.", registry=self.registry
        )
        self.attaches = Counter(
            "prewarm_agent_attaches",
            "Attach calls by inference processes: result=hit (served from a held tier, by tier) "
            "or miss (the model was not held: the process loads the weights itself).",
            ["result", "tier"],
            registry=self.registry,
        )
        self.pressure_events = Counter(
            "prewarm_agent_pressure_events",
            "Times free GPU memory fell below the headroom because of other processes.",
            registry=self.registry,
        )
        agent.add_listener(self._on_event)

    def _on_event(
        self,
        kind: int,
        model_id: str,
        tier: Tier | None,
        nbytes: int,
        reason: str,
        duration_s: float,
    ) -> None:
        del model_id, duration_s
        tier_name = tier.label if tier is not None else "unknown"
        if kind == pb.Event.KIND_EVICTED:
            self.evictions.labels(tier=tier_name, reason=eviction_reason(reason)).inc()
        elif kind == pb.Event.KIND_LOADED:
            self.loaded_bytes.labels(tier=tier_name).inc(nbytes)
        elif kind == pb.Event.KIND_LOAD_FAILED:
            self.load_failures.inc()
        elif kind == pb.Event.KIND_PRESSURE:
            self.pressure_events.inc()
        elif kind == pb.Event.KIND_ATTACHED:
            self.attaches.labels(result="hit", tier=tier_name).inc()
        elif kind == pb.Event.KIND_ATTACH_MISSED:
            self.attaches.labels(result="miss", tier="none").inc()
