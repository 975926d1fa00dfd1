#!/usr/bin/env bash
# Installs or builds the real components the tests talk to, once, cached outside the repository.
# Runs every hack/testenv.d/*.sh in name order; each is idempotent (quick when already done) and may
# append `export NAME=value` lines to hack/testenv.env, which hack/test.sh sources before pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
: > hack/testenv.env
export PREWARM_TESTENV_CACHE=${PREWARM_TESTENV_CACHE:-$HOME/.cache/prewarm-testenv}
mkdir -p "$PREWARM_TESTENV_CACHE"
echo "export PREWARM_TESTENV_CACHE=$PREWARM_TESTENV_CACHE" >> hack/testenv.env
for step in hack/testenv.d/*.sh; do
  [ -e "$step" ] || continue
  echo "testenv: $step" >&2
  bash "$step"
done
