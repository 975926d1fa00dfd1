#!/usr/bin/env bash
# Regenerate the pinned dependency locks from pyproject.toml (needs .venv from hack/bootstrap.sh).
#   requirements.lock          everything: runtime + torch + dev tools (tests, CI, development)
#   requirements-runtime.lock  the daemon image: runtime dependencies, no torch
#   requirements-agent.lock    the GPU-agent image: runtime + torch (PyPI's CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.venv/bin/uv
header="# Pinned dependencies. Regenerate with: hack/lock.sh"
compile() {
  local out=$1; shift
  "$uv" pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --no-header pyproject.toml "$@" -o "$out.tmp"
  { echo "$header"; cat "$out.tmp"; } > "$out"
  rm -f "$out.tmp"
}
compile requirements.lock --extra dev --extra agent
compile requirements-runtime.lock
compile requirements-agent.lock --extra agent
