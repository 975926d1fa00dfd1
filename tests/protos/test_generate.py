"""The committed generated modules are exactly what protos/generate.sh produces from the .protos."""

from __future__ import annotations

import subprocess
from pathlib import Path

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_regenerating_changes_nothing(repo_root: Path, tmp_path: Path) -> None:
    subprocess.run(
        [str(repo_root / "protos" / "generate.sh")],
        check=True,
        env={"PROTOS_OUT": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    protos = sorted((repo_root / "protos").glob("*.proto"))
    assert protos, "no .proto files found"
    for proto in protos:
        for suffix in GENERATED_SUFFIXES:
            name = proto.stem + suffix
            fresh = tmp_path / "protos" / name
            committed = repo_root / "protos" / name
            assert fresh.exists(), f"generate.sh did not produce {name}"
            assert committed.exists(), f"{name} is not committed; run protos/generate.sh"
            assert committed.read_bytes() == fresh.read_bytes(), (
                f"protos/{name} is stale; run protos/generate.sh"
            )
