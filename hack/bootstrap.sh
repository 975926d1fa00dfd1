#!/usr/bin/env bash
# Create .venv (if missing) and install prewarm with its pinned dependencies. Idempotent and quiet
# when nothing changed. Needs only python3 (>= 3.11) and the PyPI registry.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "uv==0.13.9" 2>/dev/null \
    || "$VENV/bin/pip" install --quiet --disable-pip-version-check uv
fi
stamp="$VENV/.prewarm-installed"
if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing pinned dependencies into $VENV (first run downloads ~3 GB for torch)" >&2
  "$VENV/bin/uv" pip install --quiet --compile-bytecode --python "$VENV/bin/python" -r requirements.lock
  "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
  touch "$stamp"
fi
