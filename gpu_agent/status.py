"""The Status answer: GPUs as NVML sees them, per-tier usage and capacity, and every holding.

Owns how the agent reports itself: its share of each GPU against other processes' (and until
when a GPU is yielded to a starting replica), bytes and
models per tier, the capacity a tier may still grow into (free space beyond its headroom) and
each model's top tier, value density, last use and latest load (duration, from and to which
tier), and a directory model's hand-off paths (its revision directory and ``current`` link).
Older versions that leases still hold after a newer one replaced them are not models of their
own: their bytes count in the tiers' usage.
It must not change any holding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from common.ids import ModelId
from common.tiers import HELD_TIERS, Tier
from gpu_agent.events import timestamp
from gpu_agent.holdings import Holdings
from gpu_agent.nvml import GpuMemory
from protos import gpu_agent_pb2 as pb
from protos.tiers import agent_tier


def status_response(
    holdings: Holdings,
    *,
    node: str,
    gpu_unavailable_reason: str | None,
    gpus: Sequence[GpuMemory],
    headroom_bytes: int,
    room_bytes: Mapping[Tier, int],
    yielded: Mapping[str, tuple[float, str]] | None = None,
    wall_clock: Callable[[], float],
    monotonic: Callable[[], float],
    current_link: Callable[[ModelId], Path] | None = None,
) -> pb.StatusResponse:
    """The StatusResponse of ``holdings`` now.

    ``current_link``: where a directory model's ``current`` link lies (the host tier's rule).

    ``room_bytes``: per tier, the free space beyond its headroom (may be negative); ``gpus``: the
    NVML readings; ``yielded``: per yielded GPU, the hold's end (wall clock) and its reason.
    ``last_used`` (monotonic) is reported as wall-clock time.
    """
    response = pb.StatusResponse(node=node, gpu_available=gpu_unavailable_reason is None)
    if gpu_unavailable_reason is not None:
        response.gpu_unavailable_reason = gpu_unavailable_reason
    for gpu in gpus:
        ours = holdings.gpu_bytes(gpu.uuid)
        estimate = max(gpu.used_bytes - ours, 0)
        others = (
            estimate
            if gpu.other_processes_bytes is None
            else min(gpu.other_processes_bytes, estimate)
        )
        response.gpus.append(
            pb.GpuStatus(
                uuid=gpu.uuid,
                index=gpu.index,
                name=gpu.name,
                total_bytes=gpu.total_bytes,
                used_bytes=gpu.used_bytes,
                free_bytes=gpu.free_bytes,
                other_processes_bytes=others,
                ours_bytes=ours,
                headroom_bytes=headroom_bytes,
            )
        )
        if yielded is not None and gpu.uuid in yielded:
            until, reason = yielded[gpu.uuid]
            response.gpus[-1].yielded_until.CopyFrom(timestamp(until))
            response.gpus[-1].yield_reason = reason
    usage = {tier: [0, 0] for tier in HELD_TIERS}
    with holdings.lock:
        for holding in holdings.all():
            tiers = [(Tier.DISK, holding.disk_bytes)]
            if holding.host_files is not None:
                tiers.append((Tier.HOST, holding.file_bytes))
            if holding.gpu is not None:
                tiers.append((Tier.GPU, holding.gpu.nbytes))
            for tier, nbytes in tiers:
                usage[tier][0] += nbytes
                usage[tier][1] += 1
            top = tiers[-1][1]
            reported = pb.ModelHolding(
                model_id=holding.model_id,
                tier=agent_tier(holding.tier),
                bytes=top,
                predicted_value=holding.predicted_value,
                value_density=holding.candidate(top).density,
                last_used=timestamp(wall_clock() - (monotonic() - holding.last_used)),
                attached=len(holding.leases),
                gpu_uuid=holding.gpu.gpu_uuid if holding.gpu else "",
            )
            if holding.host_dir is not None:
                reported.model_dir = str(holding.host_dir)
                reported.revision = holding.revision
                if current_link is not None:
                    reported.current_dir = str(current_link(holding.model_id))
            if (load := holding.last_load) is not None:
                reported.load_duration_s = load.duration_s
                reported.loaded_at.CopyFrom(timestamp(load.finished_unix_s))
                reported.loaded_from = agent_tier(load.source)
                reported.loaded_to = agent_tier(load.target)
                reported.loaded_bytes = load.nbytes
            response.models.append(reported)
        for old in holdings.retired():
            usage[Tier.DISK][0] += old.disk_bytes
            if old.host_files is not None:
                usage[Tier.HOST][0] += old.file_bytes
            if old.gpu is not None:
                usage[Tier.GPU][0] += old.gpu.nbytes
    for tier, (used, count) in usage.items():
        response.tiers.append(
            pb.TierUsage(
                tier=agent_tier(tier),
                used_bytes=used,
                capacity_bytes=used + max(room_bytes[tier], 0),
                models=count,
            )
        )
    return response
