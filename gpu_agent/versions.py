"""Which version of a model's weights a Preload asks for, so a re-Preload never gets stale bytes.

Owns the digest of a Preload's weights (:func:`weights_digest`: each file's place in the model
and its sha256, or its URI where the config lets a source go unverified) and the revision a
single-file model is held at (:func:`with_revision`: the digest's first 16 hex digits, the
counterpart of a directory model's :func:`gpu_agent.model_dir.digest_revision`). The agent keeps
the digest with each holding (and the disk tier in its manifest) and compares: other weights are
another version, loaded beside the held one. Pure: no I/O, no tiers.
"""

from __future__ import annotations

import dataclasses
import hashlib

from gpu_agent.specs import CheckedWeights

REVISION_DIGITS = 16


def weights_digest(checked: CheckedWeights) -> str:
    """The sha256 (hex) of what ``checked`` names: a directory model's files by path (in any
    order), a single-file model's files in order (their order is the tensor table's)."""
    keys = checked.paths or tuple(f"{index:04d}" for index in range(len(checked.sources)))
    items = [
        (key, source.sha256 or f"unverified:{source.uri}")
        for key, source in zip(keys, checked.sources, strict=True)
    ]
    if checked.paths:
        items.sort()
    hasher = hashlib.sha256()
    for key, ident in items:
        hasher.update(f"{key}\0{ident}\n".encode())
    return hasher.hexdigest()


def with_revision(checked: CheckedWeights) -> CheckedWeights:
    """``checked`` with a single-file model's revision filled in from its digest (directory
    models, and requests without weights, unchanged)."""
    if checked.is_directory or not checked.sources or checked.revision:
        return checked
    return dataclasses.replace(checked, revision=weights_digest(checked)[:REVISION_DIGITS])
