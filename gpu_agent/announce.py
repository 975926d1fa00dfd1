"""What the agent says when it starts serving: where, with what auth, into which tiers, and why
there is no GPU tier when there is none.

Owns the fields of the ``gpu agent serving`` log line (:func:`serving_fields`) and the check that
CUDA sees the GPUs NVML reports (:func:`cuda_mismatch`). Must not decide anything: it reads the
agent's configuration and state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.tiers import Tier
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig

AUTH_NAMES = {"token": "bearer", "mtls": "mtls", "none": "none"}
"""``agent.auth.mode`` as the start line names it (a token is sent as ``Bearer``)."""


def human_bytes(nbytes: int) -> str:
    """``nbytes`` in binary units with one decimal (``7.8 GiB``; negative stays negative)."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def serving_fields(config: AgentConfig, agent: Agent, port: int) -> dict[str, str]:
    """The fields of the start line: ``address`` (the listen host with the bound port),
    ``auth``, ``tiers`` (the tiers Preload may fill, fastest first), per tier its place and the
    room models may take beyond its headroom, ``gpu`` (``none``, or how many of which model) and,
    without a GPU tier, ``gpu_reason`` (no NVML library or driver, or no device)."""
    host = config.listen.rpartition(":")[0] or config.listen
    gpus = agent.gpus()
    room = agent.tier_room(gpus)
    reason = agent.gpu_unavailable_reason()
    tiers = [Tier.HOST, Tier.DISK] if reason is not None else [Tier.GPU, Tier.HOST, Tier.DISK]
    fields = {
        "address": f"{host}:{port}",
        "auth": AUTH_NAMES[config.auth.mode],
        "tiers": ",".join(tier.label for tier in tiers),
        "host": f"{config.shm_dir}, {human_bytes(room[Tier.HOST])} free",
        "disk": f"{config.cache_dir}, {human_bytes(room[Tier.DISK])} free",
    }
    if reason is not None:
        fields["gpu"] = "none"
        fields["gpu_reason"] = reason
    else:
        names = sorted({gpu.name for gpu in gpus})
        fields["gpu"] = f"{len(gpus)}x {'/'.join(names)}, {human_bytes(room[Tier.GPU])} free"
    return fields


def cuda_mismatch(
    agent: Agent, *, cuda_devices: Callable[[], int] = torch.cuda.device_count
) -> str | None:
    """Why GPU-tier loads will fail although NVML reports GPUs: CUDA (torch) sees none (a CPU
    build of torch, or ``CUDA_VISIBLE_DEVICES`` hiding them); ``None`` when it sees some or the
    GPU tier is off anyway."""
    if agent.gpu_unavailable_reason() is not None:
        return None
    gpus = agent.gpus()
    if not gpus or cuda_devices() > 0:
        return None
    cuda = "a CPU build of torch" if torch.version.cuda is None else "CUDA_VISIBLE_DEVICES"
    return (
        f"NVML reports {len(gpus)} GPU(s) but CUDA sees none ({cuda} hides them): GPU-tier "
        "preloads will fail; host and disk tiers work"
    )
