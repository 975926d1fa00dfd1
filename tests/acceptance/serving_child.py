"""A serving process's weight load, run by the acceptance test in a process of its own.

Usage: ``python -m tests.acceptance.serving_child attach TARGET MODEL_ID`` (take the weights the
node's agent holds, host tier) or ``... cold URL SHA256`` (what a serving process does without
prewarm: download the weights from their source, verify them, load them). Either way every page
of every tensor is read once (a model's first forward pass touches all of its weights). Prints
one JSON line:
how the weights were obtained, the seconds the load and the pass took (the interpreter's start
and imports excluded), and a checksum over all tensors.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import urllib.request

import safetensors.torch
import torch

from common.tiers import Tier
from gpu_agent.client import attach


def checksum(tensors: dict[str, torch.Tensor]) -> float:
    """A sum over one element in every 1,024 of each tensor: each memory page is read."""
    return sum(float(t.reshape(-1)[::1024].double().sum()) for _, t in sorted(tensors.items()))


def main() -> None:
    mode = sys.argv[1]
    started = time.perf_counter()
    if mode == "attach":
        model = attach(sys.argv[3], sys.argv[2], max_tier=Tier.HOST)
        tier, tensors = model.tier, model.tensors
    else:
        with urllib.request.urlopen(sys.argv[2], timeout=60) as response:
            blob = response.read()
        if hashlib.sha256(blob).hexdigest() != sys.argv[3]:
            raise SystemExit("checksum mismatch")
        tier, tensors = "cold", safetensors.torch.load(blob)
    total = checksum(tensors)
    seconds = time.perf_counter() - started
    print(json.dumps({"tier": tier, "seconds": seconds, "checksum": total}), flush=True)


if __name__ == "__main__":
    main()
