"""Directory models for the tests: a tiny model directory and the Preload sources that list it.

Owns: writing a small directory shaped like a Hub repository (config, tokenizer files in a
subdirectory, two safetensors shards and their index) without any ML library beyond safetensors,
the per-file sources of any directory (file:// or under an http base URL), and reading what the
agent's host tier shows pods (the revision directories and the ``current`` link). Must not: start
agents or servers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from gpu_agent.model_dir import CURRENT_LINK, MODELS_SUBDIR, model_slug
from protos import gpu_agent_pb2 as pb
from tests.harness.agent import sha256


def write_model_dir(root: Path, *, seed: int = 0) -> dict[str, bytes]:
    """A small model directory at ``root``; its files' bytes by relative path."""
    generator = torch.Generator().manual_seed(seed)
    shards = {
        "model-00001-of-00002.safetensors": {
            "embed.weight": torch.randn(50, 8, generator=generator)
        },
        "model-00002-of-00002.safetensors": {
            "head.weight": torch.randn(8, 50, generator=generator)
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for name, tensors in shards.items():
        safetensors.torch.save_file(tensors, str(root / name))
        weight_map.update(dict.fromkeys(tensors, name))
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2 * 50 * 8 * 4}, "weight_map": weight_map})
    )
    (root / "config.json").write_text(json.dumps({"model_type": "tiny", "seed": seed}))
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "seed": seed}))
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def dir_sources(root: Path, *, base_url: str | None = None) -> list[pb.Source]:
    """One source per file of ``root``, with its path: file:// URIs, or ``base_url + path``."""
    sources = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        uri = path.as_uri() if base_url is None else base_url + rel
        sources.append(
            pb.Source(uri=uri, sha256=sha256(path), size_bytes=path.stat().st_size, path=rel)
        )
    return sources


def model_base(shm_dir: Path, model_id: str) -> Path:
    """``<shm_dir>/models/<slug>/``: where the agent materialises ``model_id``'s revisions."""
    return shm_dir / MODELS_SUBDIR / model_slug(model_id)


def current_target(shm_dir: Path, model_id: str) -> str | None:
    """The revision ``current`` points to, or ``None`` when there is no link."""
    link = model_base(shm_dir, model_id) / CURRENT_LINK
    return os.readlink(link) if link.is_symlink() else None


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """The files under ``directory`` by relative path (links followed)."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
