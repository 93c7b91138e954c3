#!/usr/bin/env bash
# scripts/gpu_check.sh: everything the GPU machine has to do, in one call.
#   build  -> pip install . (kernels for ZQ_CUDA_ARCHS, default "80;90a"), no network needed
#   test   -> the whole pytest suite, GPU tests included
#   bench  -> benchmarks/bench_w8a8.py (full, or --short with BENCH=short), JSON under $OUT
# Usage: scripts/gpu_check.sh [steps...]   (default: build test bench)
# Needs: the nvidia-cutlass wheel in .whl/ (carried: it is in .git/info/exclude) or CUTLASS_DIR set.
# Prints a short summary last; full logs go to $OUT (or ./gpu_out without $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
STEPS="${*:-build test bench}"
export PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
export ZQ_CUDA_ARCHS="${ZQ_CUDA_ARCHS:-80;90a}"
summary=()
t0=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader \
  | tee "$OUT/gpu.txt"

if [[ -z "${CUTLASS_DIR:-}" ]]; then
  whl=$(ls .whl/nvidia_cutlass-4.2.0.0-*.whl 2>/dev/null | head -1)
  if [[ -n "$whl" ]]; then
    mkdir -p /tmp/zq_cutlass && python3 -m zipfile -e "$whl" /tmp/zq_cutlass >/dev/null
    export CUTLASS_DIR=/tmp/zq_cutlass/cutlass_library/source
  fi
fi

if [[ " $STEPS " == *" build "* ]]; then
  tb=$(date +%s)
  if python3 -m pip install --no-build-isolation --no-deps --no-index -v . >"$OUT/build.log" 2>&1; then
    summary+=("build: ok in $(( $(date +%s) - tb )) s (archs $ZQ_CUDA_ARCHS)")
  else
    tail -60 "$OUT/build.log"
    echo "BUILD FAILED"
    exit 1
  fi
  grep -E "warning|C7510" "$OUT/build.log" | grep -v "^ *$" | head -20
fi

# Run from outside the source tree so `import zqkernels` takes the installed package (with _C).
python3 -c "import zqkernels, json; print(json.dumps(zqkernels.info(), indent=1))" 2>&1 | tee "$OUT/info.txt"

if [[ " $STEPS " == *" test "* ]]; then
  tt=$(date +%s)
  python3 -m pytest -q -rs -x --timeout=300 -p no:cacheprovider tests ${PYTEST_ARGS:-} \
    >"$OUT/pytest.log" 2>&1
  rc=$?
  tail -40 "$OUT/pytest.log"
  summary+=("tests: rc=$rc, $(tail -1 "$OUT/pytest.log") ($(( $(date +%s) - tt )) s)")
fi

if [[ " $STEPS " == *" bench "* ]]; then
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  args=(--json "$OUT/bench_w8a8.json")
  [[ "${BENCH:-full}" == "short" ]] && args+=(--short)
  [[ -n "${BENCH_CONFIGS:-}" ]] && args+=(--configs)
  python3 benchmarks/bench_w8a8.py "${args[@]}" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -80
  summary+=("bench: commit $commit, log $OUT/bench.log")
fi

echo
echo "==== gpu_check summary ($(( $(date +%s) - t0 )) s) ===="
for s in "${summary[@]}"; do echo "$s"; done
