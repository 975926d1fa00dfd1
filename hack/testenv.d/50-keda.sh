#!/usr/bin/env bash
# Builds KEDA's own operator once for the KEDA-for-real tests (tests/control/test_keda_operator.py)
# and caches it outside the repository, under $PREWARM_TESTENV_CACHE (default
# ~/.cache/prewarm-testenv):
#   keda-operator   github.com/kedacore/keda/v2, main package ./cmd/operator, pinned to the same
#                   release as the KEDA CRDs of 40-crds.sh (v2.20.0: the newest whose go.mod the
#                   local Go toolchain accepts with GOTOOLCHAIN=local; v2.21 needs a newer Go).
#                   The tests run it as a separate process against the test apiserver; it is never
#                   linked into prewarm.
# `go install module/cmd/operator@version` refuses KEDA: its go.mod has `replace` directives (it pins
# k8s.io and Prometheus modules), which Go only honours in the main module. So the module source is
# fetched with `go mod download`, copied to a scratch directory (the module cache is read-only) and
# built there as the main module, with -mod=mod since the module zip carries no vendor directory.
# The three KEDA CRDs that 40-crds.sh does not fetch but the operator watches (ScaledJobs and the
# eventing CloudEventSources; without their kinds its manager stops) are copied, unchanged, from the
# same module release into crds/ next to the binary; tests/harness/keda.py installs them.
# Idempotent and fast when cached: the binary lives in a directory named by its pinned version, so a
# second run only checks that it exists. The build is niced (the machine's two cores are shared) and
# takes many minutes the first time. Appends `export PREWARM_KEDA_OPERATOR_BIN=...` to
# hack/testenv.env, which tests/harness/keda.py reads.
set -euo pipefail
cd "$(dirname "$0")/../.."

KEDA_MODULE=github.com/kedacore/keda/v2
KEDA_VERSION=v2.20.0
cache=${PREWARM_TESTENV_CACHE:-$HOME/.cache/prewarm-testenv}
keda_dir="$cache/keda-$KEDA_VERSION"
out="$keda_dir/keda-operator"
crds="$keda_dir/crds"
operator_only_crds=(keda.sh_scaledjobs.yaml eventing.keda.sh_cloudeventsources.yaml
  eventing.keda.sh_clustercloudeventsources.yaml)

# The module's source directory in the test-environment module cache (as 40-crds.sh fetches it).
keda_source() {
  local src
  src=$(cd /tmp && GOMODCACHE="$cache/gomod" GOFLAGS=-mod=mod GOTOOLCHAIN=local \
    go mod download -json "$KEDA_MODULE@$KEDA_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  if [ -z "$src" ] || [ ! -f "$src/cmd/operator/main.go" ]; then
    echo "testenv: $KEDA_MODULE@$KEDA_VERSION has no cmd/operator" >&2
    exit 1
  fi
  echo "$src"
}

if [ ! -x "$out" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "testenv: go is required to build the KEDA operator (not on PATH)" >&2
    exit 1
  fi
  export GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
  # Build in a scratch copy and rename, so an interrupted build never leaves a binary that a later
  # run would trust.
  scratch="$keda_dir/.build.$$"
  mkdir -p "$scratch"
  trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
  start=$SECONDS
  src=$(keda_source)
  cp -R "$src/." "$scratch/src"
  chmod -R u+w "$scratch/src"
  echo "testenv: building $KEDA_MODULE/cmd/operator@$KEDA_VERSION (once; many minutes)" >&2
  # KEDA's Makefile stamps the version the operator logs at start the same way.
  (cd "$scratch/src" && nice -n 10 go build -trimpath \
    "-ldflags=-s -w -X=$KEDA_MODULE/version.Version=${KEDA_VERSION#v}" \
    -o "$scratch/keda-operator" ./cmd/operator)
  mv -f "$scratch/keda-operator" "$out"
  echo "testenv: built keda-operator in $((SECONDS - start)) s" >&2
fi

if [ ! -f "$crds/.complete" ]; then
  src=$(keda_source)
  rm -rf "$crds"
  mkdir -p "$crds"
  for name in "${operator_only_crds[@]}"; do
    install -m 0644 "$src/config/crd/bases/$name" "$crds/$name"
  done
  touch "$crds/.complete"
fi

test -x "$out"

if [ -f hack/testenv.env ]; then
  echo "export PREWARM_KEDA_OPERATOR_BIN=$out" >> hack/testenv.env
fi
