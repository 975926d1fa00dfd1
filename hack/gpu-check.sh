#!/usr/bin/env bash
# The GPU agent's checks that need CUDA, in one command: the gpu_agent test suite (its @gpu tests
# run only where CUDA is available) and the GPU benchmark. Output goes to $OUT (default out/gpu-check).
# Usage: hack/gpu-check.sh            (on a machine with an NVIDIA GPU)
# Python: .venv/bin/python if present, else python3 (then wheels in .whl/, if any, are installed
# into /tmp/site first: the project's pinned versions of packages the machine may lack).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  df -h /dev/shm . || true
  "$PY" -c 'import sys, torch, grpc, google.protobuf as p; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "grpcio", grpc.__version__, "protobuf", p.__version__)'
} 2>&1 | tee "$OUT/env.txt"

deselect=()
if [ "$PY" = python3 ]; then
  # test_restart.py, test_fuzz.py and one test of test_tier_roots.py run the whole `prewarm` CLI,
  # whose other commands need packages a bare GPU machine lacks (kubernetes,
  # prometheus-api-client, ...); they are CPU tests, run in CI.
  deselect=(--deselect tests/gpu_agent/test_restart.py --deselect tests/gpu_agent/test_fuzz.py
    --deselect tests/gpu_agent/test_tier_roots.py::test_prewarm_agent_exits_with_a_configuration_error)
fi
status=0
"$PY" -m pytest tests/gpu_agent -q -p no:cacheprovider --confcutdir tests/gpu_agent \
  "${deselect[@]}" 2>&1 | tee "$OUT/tests.log" || status=1
mkdir -p .bench-tmp
"$PY" benchmarks/gpu_agent.py --json "$OUT/gpu_agent.json" --work-dir .bench-tmp "$@" \
  2>&1 | tee "$OUT/bench.log" || status=1
rm -rf .bench-tmp
exit $status
