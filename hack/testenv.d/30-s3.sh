#!/usr/bin/env bash
# Builds a real S3-compatible server once for the object-source tests (tests/gpu_agent/
# test_remote_s3.py) and caches it outside the repository, under $PREWARM_TESTENV_CACHE (default
# ~/.cache/prewarm-testenv):
#   minio   github.com/minio/minio (the server's own Go module, main package at its root), pinned
#           to the pseudo-version below: the Go module proxy lists no tagged release of it, only
#           this commit. It is run by the tests as a separate process on 127.0.0.1 and never linked
#           into prewarm (the server is AGPL-3.0; nothing of it is shipped).
# Idempotent and fast when cached: the binary lives in a directory named by its pinned version, so a
# second run only checks that it exists and starts. Builds use -trimpath -ldflags='-s -w' and are
# niced (the machine's two cores are shared); the first build takes many minutes. Appends
# `export PREWARM_S3_SERVER_BIN=...` to hack/testenv.env, which tests/harness/s3.py reads.
set -euo pipefail
cd "$(dirname "$0")/../.."

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
cache=${PREWARM_TESTENV_CACHE:-$HOME/.cache/prewarm-testenv}
minio_dir="$cache/minio-$MINIO_VERSION"
out="$minio_dir/minio"

if [ ! -x "$out" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "testenv: go is required to build the S3 server (not on PATH)" >&2
    exit 1
  fi
  # Build into a scratch GOBIN and rename, so an interrupted build never leaves a binary that a
  # later run would trust.
  gobin="$minio_dir/.gobin.$$"
  mkdir -p "$gobin"
  trap 'rm -rf "$gobin"' EXIT
  start=$SECONDS
  echo "testenv: building github.com/minio/minio@$MINIO_VERSION (once; many minutes)" >&2
  GOFLAGS=-mod=mod GOBIN="$gobin" nice -n 10 \
    go install -trimpath "-ldflags=-s -w" "github.com/minio/minio@$MINIO_VERSION"
  mv -f "$gobin/minio" "$out"
  echo "testenv: built minio in $((SECONDS - start)) s" >&2
fi

"$out" --version >/dev/null

if [ -f hack/testenv.env ]; then
  echo "export PREWARM_S3_SERVER_BIN=$out" >> hack/testenv.env
fi
