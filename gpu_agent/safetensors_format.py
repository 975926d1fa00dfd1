"""Reading and validating the safetensors layout (header + byte ranges) without loading tensors.

Owns the check that a file is a well-formed, complete safetensors file, and the per-tensor byte
ranges every tier uses to build zero-copy views. It must not read tensor data or import torch: the
tiers decide how bytes move.

Format: 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}``, then the data section; offsets are relative
to the start of the data section.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from common.errors import DataLoss

MAX_HEADER_BYTES = 100 * 1024**2
"""The reference implementation refuses larger headers too."""

DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor's place in a safetensors file; ``begin``/``end`` are data-section offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class SafetensorsLayout:
    """A validated file: every tensor lies inside the data section and the file is complete."""

    path: Path
    data_start: int
    data_bytes: int
    tensors: tuple[TensorEntry, ...]

    @property
    def file_bytes(self) -> int:
        return self.data_start + self.data_bytes


def read_layout(path: Path) -> SafetensorsLayout:
    """Parse and validate ``path``; :class:`DataLoss` names what is wrong if it is not complete.

    Checks: header length sane, JSON valid, known dtypes, ``end - begin`` equals the shape's size,
    ranges inside the data section, and the file is exactly as long as the header says.
    """
    try:
        with path.open("rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) != 8:
                raise DataLoss(f"{path.name}: truncated safetensors file (no header length)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len == 0 or header_len > MAX_HEADER_BYTES:
                raise DataLoss(f"{path.name}: corrupt safetensors header length {header_len}")
            header_raw = handle.read(header_len)
            file_bytes = handle.seek(0, 2)
    except OSError as error:
        raise DataLoss(f"{path.name}: cannot read: {error.strerror or error}") from error
    if len(header_raw) != header_len:
        raise DataLoss(f"{path.name}: truncated safetensors header")
    try:
        header = json.loads(header_raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataLoss(f"{path.name}: corrupt safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise DataLoss(f"{path.name}: corrupt safetensors header: not a JSON object")
    data_start = 8 + header_len
    data_bytes = file_bytes - data_start
    tensors = []
    expected_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors.append(_entry(path, name, info=info, data_bytes=data_bytes))
    for entry in sorted(tensors, key=lambda t: t.begin):
        expected_end = max(expected_end, entry.end)
    if expected_end > data_bytes:
        raise DataLoss(
            f"{path.name}: truncated safetensors file: tensors need {expected_end} data bytes, "
            f"file has {data_bytes}"
        )
    if expected_end != data_bytes:
        raise DataLoss(
            f"{path.name}: corrupt safetensors file: {data_bytes - expected_end} trailing bytes"
        )
    return SafetensorsLayout(
        path=path,
        data_start=data_start,
        data_bytes=data_bytes,
        tensors=tuple(sorted(tensors, key=lambda t: t.begin)),
    )


def _entry(path: Path, name: str, *, info: object, data_bytes: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise DataLoss(f"{path.name}: corrupt entry for tensor {name!r}")
    dtype = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise DataLoss(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise DataLoss(f"{path.name}: tensor {name!r} has a corrupt shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise DataLoss(f"{path.name}: tensor {name!r} has corrupt data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise DataLoss(f"{path.name}: tensor {name!r}: byte range does not match its shape")
    if end > data_bytes:
        raise DataLoss(
            f"{path.name}: truncated safetensors file: tensor {name!r} ends at {end}, "
            f"data section has {data_bytes} bytes"
        )
    if begin % DTYPE_SIZES[dtype]:
        # Valid per the format, but no zero-copy typed view can start there; writers align.
        raise DataLoss(f"{path.name}: tensor {name!r} is not aligned to its dtype")
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)
