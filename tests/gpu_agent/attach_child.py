"""Run in a separate process by the tests: attach to a model and report what it sees.

Usage: python -m tests.gpu_agent.attach_child TARGET MODEL_ID MAX_TIER [FALLBACK...]
MAX_TIER is a :class:`common.tiers.Tier` value (3 = GPU). Prints one JSON line: tier, per-tensor
sums, and the devices of the tensors; then waits for a line on stdin (so the parent can change the
memory underneath), prints the sums again, releases and exits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from common.tiers import Tier
from gpu_agent.client import attach


def sums(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(t.double().sum()) for name, t in sorted(tensors.items())}


def main() -> None:
    target, model_id, max_tier = sys.argv[1], sys.argv[2], Tier(int(sys.argv[3]))
    fallback = [Path(p) for p in sys.argv[4:]]
    model = attach(model_id, target, max_tier=max_tier, fallback_files=fallback)
    devices = sorted({str(t.device) for t in model.tensors.values()})
    print(json.dumps({"tier": model.tier, "sums": sums(model.tensors), "devices": devices}),
          flush=True)  # fmt: skip
    sys.stdin.readline()
    print(json.dumps({"sums": sums(model.tensors)}), flush=True)
    model.release()


if __name__ == "__main__":
    main()
