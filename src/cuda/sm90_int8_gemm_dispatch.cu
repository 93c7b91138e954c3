// sm90_int8_gemm_dispatch.cu: the sm90 int8 GEMM config table and its M-bucket dispatch.
// Host code only; each config's kernels live in sm90_int8_gemm_<config>.cu.
#include <string>

#include "gemm_registry.h"
#include "zq_kernels.h"

namespace zq {
namespace sm90 {
// Defined one per translation unit (see the table below for what each is for).
GemmEntry entry_128x256x64_c2x1_coop(DType);
GemmEntry entry_128x256x128_c2x1_coop(DType);
GemmEntry entry_128x128x128_c2x1_pp(DType);
GemmEntry entry_64x128x128_c1x2_pp(DType);
GemmEntry entry_swap_64x16x256_pp(DType);
GemmEntry entry_swap_64x32x256_pp(DType);
GemmEntry entry_swap_64x64x256_pp(DType);
GemmEntry entry_swap_128x32x256_coop_sk(DType);
GemmEntry entry_swap_128x64x256_coop_sk(DType);

namespace {
using EntryFn = GemmEntry (*)(DType);
// Index = config id (stable within a build; tests and benchmarks sweep all of them).
constexpr EntryFn kConfigs[] = {
    entry_128x256x128_c2x1_coop,    // 0
    entry_128x128x128_c2x1_pp,      // 1
    entry_64x128x128_c1x2_pp,       // 2
    entry_swap_64x16x256_pp,        // 3
    entry_swap_64x32x256_pp,        // 4
    entry_swap_64x64x256_pp,        // 5
    entry_swap_128x32x256_coop_sk,  // 6
    entry_swap_128x64x256_coop_sk,  // 7
    entry_128x256x64_c2x1_coop,     // 8 (large-M alternative: see docs/PERF_NOTES.md)
};
constexpr int kNumConfigs = sizeof(kConfigs) / sizeof(kConfigs[0]);
}  // namespace
}  // namespace sm90

int sm90_int8_gemm_num_configs() { return sm90::kNumConfigs; }

const char* sm90_int8_gemm_config_name(int config) {
  if (config < 0 || config >= sm90::kNumConfigs) return nullptr;
  return sm90::kConfigs[config](DType::kBF16).name;
}

// M buckets, from scripts/probe_gemm.py on an H100 (benchmarks/results/probe_*.json).
// M <= 64 is weight-bandwidth bound: swap-AB puts the tokens on the narrow wgmma N side so a
// 64-row weight tile is streamed once per token tile. 64 < M <= 256 with few output tiles
// (N <= 8192: 32-64 CTA tiles for 132 SMs) uses stream-K to spread the K loop over every SM;
// with many tiles, plain ping-pong tiles. Large M is tensor-core bound: 128x256 cooperative tiles
// with the weight tile multicast across a 2-CTA cluster. (A 64-deep K tile, config 8, won a
// round-robin comparison by 3-8% but lost the full benchmark by 1-4%: no measurable difference
// under the H100's power cap, so the 128-deep original stays; docs/PERF_NOTES.md.)
int sm90_int8_gemm_auto_config(int M, int N, int /*K*/) {
  if (M <= 16) return 3;                   // swap_64x16x256_pp
  if (M <= 32) return 4;                   // swap_64x32x256_pp
  if (M <= 64) return N <= 8192 ? 4 : 5;   // swap_64x32x256_pp | swap_64x64x256_pp
  if (M <= 128) return 5;                  // swap_64x64x256_pp
  if (M <= 256) return N <= 8192 ? 7 : 1;  // swap_128x64x256_coop_sk | 128x128x128_c2x1_pp
  if (M <= 512) return 1;                  // 128x128x128_c2x1_pp
  // M = 513..1024 with many output tiles: ping-pong beat cooperative in 3 runs out of 3 at
  // N = 22016 (0.4-5.5%); at N = 4096 cooperative won (3-11%).
  if (M <= 1024 && N > 8192) return 1;     // 128x128x128_c2x1_pp
  return 0;                                // 128x256x128_c2x1_coop
}

size_t sm90_int8_gemm_workspace_size(const Int8GemmArgs& args, int config) {
  if (config < 0 || config >= sm90::kNumConfigs) return 0;
  return sm90::kConfigs[config](args.out_dtype).workspace_size(args);
}

std::string sm90_int8_gemm_run(const Int8GemmArgs& args, int config) {
  const std::string err = check_int8_gemm_args("sm90", args, config, sm90::kNumConfigs);
  if (!err.empty()) return err;
  return sm90::kConfigs[config](args.out_dtype).run(args);
}

}  // namespace zq
