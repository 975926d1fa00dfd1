#!/usr/bin/env bash
# Regenerate the Python modules of every protos/*.proto with the pinned generators in .venv
# (grpcio-tools' protoc, mypy-protobuf's stub plugins). Run from anywhere; it works from the repo
# root so the generated imports read `from protos import ...`. The output is committed, and
# tests/protos checks that running this again changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# protoc finds the protoc-gen-mypy* plugins on PATH.
export PATH="$PWD/$VENV/bin:$PATH"
OUT=${PROTOS_OUT:-.}

shopt -s nullglob
protos=(protos/*.proto)
if [ ${#protos[@]} -eq 0 ]; then
  echo "generate.sh: no protos/*.proto found" >&2
  exit 1
fi
"$VENV/bin/python" -m grpc_tools.protoc -I. \
  --python_out="$OUT" --grpc_python_out="$OUT" --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
  "${protos[@]}"
