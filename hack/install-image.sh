#!/usr/bin/env bash
# The install steps of the container image, shared by the Dockerfile and CI (so CI proves them):
#   hack/install-image.sh VENV VARIANT
# VARIANT: daemon (runtime deps, no torch) or agent (runtime + torch). Installs the pinned lock,
# then prewarm itself without dependencies, then checks both entry points start.
set -euo pipefail
venv=$1
variant=${2:-daemon}
case "$variant" in
  daemon) lock=requirements-runtime.lock ;;
  agent) lock=requirements-agent.lock ;;
  *) echo "install-image: unknown variant '$variant' (daemon or agent)" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "uv==0.13.9"
"$venv/bin/uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" -r "$lock"
"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps --no-cache .
"$venv/bin/prewarm" --version
"$venv/bin/prewarm" --help > /dev/null
