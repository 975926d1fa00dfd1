"""Deterministic, valid Kubernetes names for the objects prewarm creates.

Owns the naming rule: the same inputs always give the same name (this is what makes applying a
plan twice create nothing new), and every name is a valid DNS-1123 label (63 characters at most,
lowercase alphanumerics and '-'). Must not do I/O.
"""

from __future__ import annotations

import hashlib
import re

_INVALID = re.compile(r"[^a-z0-9-]+")
MAX_NAME = 63


def short_hash(text: str, length: int = 10) -> str:
    """A stable hex digest prefix of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def dns_label(prefix: str, readable: str, *, key: str | None = None) -> str:
    """``<prefix>-<readable>``, sanitised; a hash of ``key`` (default ``readable``) is appended
    when sanitising changed ``readable`` or the name would be too long, so distinct inputs never
    collide."""
    cleaned = _INVALID.sub("-", readable.lower()).strip("-")
    name = f"{prefix}-{cleaned}" if cleaned else prefix
    if cleaned == readable and len(name) <= MAX_NAME and key is None:
        return name
    digest = short_hash(key if key is not None else readable, 8)
    head = name[: MAX_NAME - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"
