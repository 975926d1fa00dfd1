#!/usr/bin/env bash
# Installs Debian's prometheus (server + promtool) for the @pytest.mark.prometheus tests, once.
# Idempotent: does nothing when both binaries are already on PATH. Runs as root (also in CI); uses
# sudo when not root and sudo is available. Writes PREWARM_PROMETHEUS_BIN / PREWARM_PROMTOOL_BIN
# to hack/testenv.env so the test harness uses exactly these binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  fi
  echo "testenv: installing Debian's prometheus (apt-get)" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
  # The Debian package starts a system service on install where an init system runs; the tests
  # start their own server on a free port and never use that one.
fi

prometheus_bin=$(command -v prometheus)
promtool_bin=$(command -v promtool)
"$promtool_bin" --version >/dev/null
if [ -f hack/testenv.env ]; then
  {
    echo "export PREWARM_PROMETHEUS_BIN=$prometheus_bin"
    echo "export PREWARM_PROMTOOL_BIN=$promtool_bin"
  } >> hack/testenv.env
fi
