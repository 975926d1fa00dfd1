"""Small generated models for the demo: one safetensors file per model, sized in proportion.

Owns: writing deterministic weights (a seed per model) whose size is the model's catalog size
scaled down (``bytes_per_gb``), so that what the agent holds and evicts keeps the real ratios
between models while the demo moves megabytes, not gigabytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from common.ids import ModelId


def file_name(model: ModelId) -> str:
    """A file name that is safe for any model id."""
    digest = hashlib.sha256(model.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in model)[:40]
    return f"{safe}-{digest}.safetensors"


def write_model(directory: Path, model: ModelId, *, weights_gb: float, bytes_per_gb: int) -> Path:
    """Write the weights of ``model`` (float16, ``weights_gb * bytes_per_gb`` bytes); its path."""
    size = max(2, int(weights_gb * bytes_per_gb)) // 2 * 2
    seed = int(hashlib.sha256(model.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(size // 2).astype(np.float16)
    path = directory / file_name(model)
    save_file({"weight": weights}, str(path), metadata={"model": model})
    return path
