#!/usr/bin/env bash
# one-off device call (not committed)
cd "$(dirname "$0")"
[[ -z "$NO_TEST" ]] && ZQ_TESTS_OUT_OF_TREE=1 PYTEST_TARGETS="test_gemm_gpu.py::test_registry_can_implement_without_launching" \
  scripts/gpu_check.sh install test 2>&1 | grep -E "passed|failed|Error|install:|tests:" | head -8
timeout ${LLM_TIMEOUT:-300} python3 benchmarks/bench_llm.py --cases "${LLM_CASES:-decode b1 ctx1024,prefill 2048}" \
  --schemes "${LLM_SCHEMES:-fp8@lm_head=w8,w4a8@alpha=16+lm_head=w8,w4a8-fp@lm_head=w8}" \
  --modes 'bf16-eager,bf16-graph,bf16-ro,*-eager,*-graph' --budget-s 150 --json $OUT/llm.json 2>&1 \
  | grep -v -e USDT -e _warn | tail -40
[[ -z "$NO_PROBE" ]] && timeout 60 python3 benchmarks/probe_host_w4a8.py --json $OUT/host_w4a8.json 2>&1 | grep -E "M=|_int_mm|a16 op|int8_gemm op|fp_gemm op|_group_launch|a16 impl"
