#!/usr/bin/env bash
# Fetches the real CustomResourceDefinitions of the projects prewarm writes to or ships objects for
# (KEDA, KServe, Knative Serving, Karpenter, the Prometheus Operator) from their own Go modules, pinned below, through the Go module proxy
# (`go mod download`; no build). The pins are the newest releases whose go.mod the local Go toolchain
# accepts (GOTOOLCHAIN=local). The files are copied, unchanged, into one directory of the
# test-environment cache named by the pins; tests/harness/crds.py installs them into the test
# apiserver. Idempotent: a second run only checks the files exist. Appends
# `export PREWARM_CRDS_DIR=...` to hack/testenv.env.
set -euo pipefail
cd "$(dirname "$0")/../.."

KEDA=github.com/kedacore/keda/v2@v2.20.0
KSERVE=github.com/kserve/kserve@v0.15.2
KNATIVE=knative.dev/serving@v0.51.0
KARPENTER=sigs.k8s.io/karpenter@v1.14.0
PROMETHEUS_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0

# module@version|path inside the module
files=(
  "$KEDA|config/crd/bases/keda.sh_scaledobjects.yaml"
  "$KEDA|config/crd/bases/keda.sh_triggerauthentications.yaml"
  "$KEDA|config/crd/bases/keda.sh_clustertriggerauthentications.yaml"
  "$KSERVE|config/crd/full/serving.kserve.io_inferenceservices.yaml"
  "$KNATIVE|config/core/300-resources/service.yaml"
  "$KARPENTER|pkg/apis/crds/karpenter.sh_nodepools.yaml"
  "$KARPENTER|pkg/apis/crds/karpenter.sh_nodeclaims.yaml"
  "$PROMETHEUS_OPERATOR|example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"
  "$PROMETHEUS_OPERATOR|example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
  "$PROMETHEUS_OPERATOR|example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
)

cache=${PREWARM_TESTENV_CACHE:-$HOME/.cache/prewarm-testenv}
pins=$(printf '%s\n' "${files[@]}" | sha256sum | cut -c1-12)
out="$cache/crds-$pins"

if [ ! -f "$out/.complete" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "testenv: go is required to fetch the CRDs (not on PATH)" >&2
    exit 1
  fi
  export GOMODCACHE="$cache/gomod" GOFLAGS=-mod=mod GOTOOLCHAIN=local
  rm -rf "$out"
  mkdir -p "$out"
  for entry in "${files[@]}"; do
    module=${entry%%|*}
    path=${entry#*|}
    dir=$(cd /tmp && go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    if [ -z "$dir" ] || [ ! -f "$dir/$path" ]; then
      echo "testenv: $module has no $path" >&2
      exit 1
    fi
    # Flat names: the CRD file's own name, Knative's service.yaml named like the others.
    name=$(basename "$path")
    [ "$name" = service.yaml ] && name=serving.knative.dev_services.yaml
    install -m 0644 "$dir/$path" "$out/$name"
  done
  touch "$out/.complete"
  echo "testenv: CRDs in $out" >&2
fi

if [ -f hack/testenv.env ]; then
  echo "export PREWARM_CRDS_DIR=$out" >> hack/testenv.env
fi
