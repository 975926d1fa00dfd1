"""Pickle-based torch checkpoints: recognising them and converting them to safetensors.

Owns the list of pickle suffixes and the conversion of an allowed checkpoint into a safetensors
file next to it, loading it with ``weights_only=True`` so that unpickling cannot run code. It must
not decide whether pickles are allowed (the request and the config do, see :mod:`gpu_agent.specs`)
or fetch anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import safetensors.torch
import torch

from common.errors import DataLoss

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


def is_pickle(name: str) -> bool:
    """Whether a file of this name is a pickle-based checkpoint (by its suffix)."""
    return Path(name).suffix.lower() in PICKLE_SUFFIXES


def convert_pickle(path: Path, created: list[Path]) -> tuple[Path, int, str]:
    """Store the checkpoint at ``path`` as safetensors; return (new path, size, sha256).

    The new file is appended to ``created`` before it is written (so a failed load removes it)
    and ``path`` is removed once the conversion succeeded. :class:`DataLoss` when the checkpoint
    holds anything but a flat dict of tensors.
    """
    try:
        # weights_only=True: the unpickler accepts only tensors and plain containers, so a
        # checkpoint cannot run code; anything else is refused as corrupt.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise DataLoss(f"{path.name}: not a weights-only torch checkpoint: {error}") from error
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DataLoss(f"{path.name}: checkpoint is not a flat dict of tensors")
    target = path.with_suffix(".safetensors")
    created.append(target)
    safetensors.torch.save_file(
        {k: v.detach().contiguous().clone() for k, v in state.items()}, str(target)
    )
    path.unlink()
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    return target, target.stat().st_size, digest
