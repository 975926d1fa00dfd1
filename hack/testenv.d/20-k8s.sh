#!/usr/bin/env bash
# Builds the test control plane once and caches it outside the repository, under
# $PREWARM_TESTENV_CACHE (default ~/.cache/prewarm-testenv):
#   kube-apiserver  from k8s.io/kubernetes at the release pinned in hack/k8s/go.mod (every k8s.io/*
#                   staging module pinned there by a replace line), entry point hack/k8s/main.go;
#   etcd            go.etcd.io/etcd/server/v3 at the version that same build list selects, so the
#                   server matches the client kube-apiserver was built against;
#   kwok            sigs.k8s.io/kwok/cmd/kwok (simulated nodes and pods; no kubelet);
#   helm            helm.sh/helm/v3/cmd/helm (renders charts/prewarm in tests).
# Idempotent and fast when cached: each binary lives in a directory named by its pinned version
# (and, for the two built from hack/k8s, a hash of go.mod + go.sum + main.go + the version ldflags),
# so a second run only checks that the files exist. Builds use -trimpath -ldflags='-s -w' and are niced: the machine's two
# cores are shared. Appends `export PREWARM_*_BIN=...` lines to hack/testenv.env, which
# tests/harness/k8s.py reads.
set -euo pipefail
cd "$(dirname "$0")/../.."

KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
cache=${PREWARM_TESTENV_CACHE:-$HOME/.cache/prewarm-testenv}
export GOFLAGS=-mod=mod
build_flags=(-trimpath "-ldflags=-s -w")

if ! command -v go >/dev/null 2>&1; then
  echo "testenv: go is required to build the control plane (not on PATH)" >&2
  exit 1
fi

k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' hack/k8s/go.mod)
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
# Stamp the release into the binary (what /version reports); a module build has no git metadata.
version_pkg=k8s.io/component-base/version
apiserver_ldflags="-s -w -X $version_pkg.gitVersion=$k8s_version -X $version_pkg.gitMajor=1"
apiserver_ldflags+=" -X $version_pkg.gitMinor=$k8s_minor -X $version_pkg.gitTreeState=clean"
k8s_hash=$( (cat hack/k8s/go.mod hack/k8s/go.sum hack/k8s/main.go; echo "$apiserver_ldflags") \
  | sha256sum | cut -c1-12)
k8s_dir="$cache/k8s-$k8s_version-$k8s_hash"
kwok_dir="$cache/kwok-$KWOK_VERSION"
helm_dir="$cache/helm-$HELM_VERSION"

# go_build OUT PKG [LDFLAGS]: builds PKG inside hack/k8s to a scratch file, then renames it to OUT,
# so an interrupted build never leaves a half-written binary that a later run would trust.
go_build() {
  local out=$1 pkg=$2 ldflags=${3:-"-s -w"}
  [ -x "$out" ] && return 0
  mkdir -p "$(dirname "$out")"
  local start=$SECONDS
  echo "testenv: building $(basename "$out") (once; many minutes on a small machine)" >&2
  (cd hack/k8s && nice -n 10 go build -trimpath "-ldflags=$ldflags" -o "$out.tmp.$$" "$pkg")
  mv -f "$out.tmp.$$" "$out"
  echo "testenv: built $(basename "$out") in $((SECONDS - start)) s" >&2
}

# go_install OUT PKG@VERSION: for modules without replace directives, which `go install pkg@version`
# builds with their own go.mod (their k8s.io/* versions may differ from the apiserver's; they are
# API clients, so that is fine).
go_install() {
  local out=$1 pkg=$2
  [ -x "$out" ] && return 0
  local gobin
  gobin="$(dirname "$out")/.gobin.$$"
  mkdir -p "$gobin"
  local start=$SECONDS
  echo "testenv: building $pkg (once)" >&2
  GOBIN="$gobin" nice -n 10 go install "${build_flags[@]}" "$pkg"
  mv -f "$gobin/$(basename "$out")" "$out"
  rm -rf "$gobin"
  echo "testenv: built $(basename "$out") in $((SECONDS - start)) s" >&2
}

go_build "$k8s_dir/kube-apiserver" . "$apiserver_ldflags"
# The etcd main package is the root of go.etcd.io/etcd/server/v3.
go_build "$k8s_dir/etcd" go.etcd.io/etcd/server/v3
go_install "$kwok_dir/kwok" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
go_install "$helm_dir/helm" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

"$k8s_dir/kube-apiserver" --version >/dev/null
"$k8s_dir/etcd" --version >/dev/null
"$kwok_dir/kwok" --version >/dev/null
"$helm_dir/helm" version --short >/dev/null

if [ -f hack/testenv.env ]; then
  {
    echo "export PREWARM_KUBE_APISERVER_BIN=$k8s_dir/kube-apiserver"
    echo "export PREWARM_ETCD_BIN=$k8s_dir/etcd"
    echo "export PREWARM_KWOK_BIN=$kwok_dir/kwok"
    echo "export PREWARM_HELM_BIN=$helm_dir/helm"
  } >> hack/testenv.env
fi
