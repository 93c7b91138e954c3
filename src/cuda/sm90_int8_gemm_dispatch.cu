// sm90_int8_gemm_dispatch.cu: the sm90 int8 GEMM config table and its M-bucket dispatch.
// Host code only; each config's kernels live in sm90_int8_gemm_<config>.cu.
#include <string>

#include "gemm_registry.h"
#include "zq_kernels.h"

namespace zq {
namespace sm90 {
// Defined one per translation unit (see the table below for what each is for).
GemmEntry entry_128x256x128_c2x1_coop(DType);
GemmEntry entry_128x128x128_c2x1_pp(DType);
GemmEntry entry_64x128x128_c1x2_pp(DType);
GemmEntry entry_swap_128x16x256_coop_sk(DType);
GemmEntry entry_swap_128x32x256_coop_sk(DType);
GemmEntry entry_swap_128x64x256_coop_sk(DType);
GemmEntry entry_swap_64x16x256_pp(DType);

namespace {
using EntryFn = GemmEntry (*)(DType);
// Index = config id (stable within a build; tests and benchmarks sweep all of them).
constexpr EntryFn kConfigs[] = {
    entry_128x256x128_c2x1_coop,    // 0
    entry_128x128x128_c2x1_pp,      // 1
    entry_64x128x128_c1x2_pp,       // 2
    entry_swap_128x16x256_coop_sk,  // 3
    entry_swap_128x32x256_coop_sk,  // 4
    entry_swap_128x64x256_coop_sk,  // 5
    entry_swap_64x16x256_pp,        // 6
};
constexpr int kNumConfigs = sizeof(kConfigs) / sizeof(kConfigs[0]);
}  // namespace
}  // namespace sm90

int sm90_int8_gemm_num_configs() { return sm90::kNumConfigs; }

const char* sm90_int8_gemm_config_name(int config) {
  if (config < 0 || config >= sm90::kNumConfigs) return nullptr;
  return sm90::kConfigs[config](DType::kBF16).name;
}

// M buckets. Decode-sized M is weight-bandwidth bound: swap-AB puts the tokens on the narrow
// wgmma N side and stream-K spreads the weight stream over all 132 SMs. Larger M is
// tensor-core bound: wide tiles, multicast clusters. Boundaries from benchmarks/results/.
int sm90_int8_gemm_auto_config(int M, int /*N*/, int /*K*/) {
  if (M <= 16) return 3;    // swap_128x16x256_coop_sk
  if (M <= 32) return 4;    // swap_128x32x256_coop_sk
  if (M <= 64) return 5;    // swap_128x64x256_coop_sk
  if (M <= 128) return 2;   // 64x128x128_c1x2_pp
  if (M <= 1024) return 1;  // 128x128x128_c2x1_pp
  return 0;                 // 128x256x128_c2x1_coop
}

size_t sm90_int8_gemm_workspace_size(const Int8GemmArgs& args, int config) {
  if (config < 0 || config >= sm90::kNumConfigs) return 0;
  return sm90::kConfigs[config](args.out_dtype).workspace_size(args);
}

std::string sm90_int8_gemm_run(const Int8GemmArgs& args, int config) {
  if (config < 0 || config >= sm90::kNumConfigs) {
    return "sm90 int8_gemm: config " + std::to_string(config) + " out of range [0, " +
           std::to_string(sm90::kNumConfigs) + ")";
  }
  if (args.out_dtype != DType::kBF16 && args.out_dtype != DType::kFP16) {
    return "sm90 int8_gemm: out_dtype must be bf16 or fp16";
  }
  if (args.M <= 0 || args.N <= 0 || args.K <= 0) return "sm90 int8_gemm: M, N, K must be > 0";
  if (args.K % 16 != 0) return "sm90 int8_gemm: K must be a multiple of 16, got " + std::to_string(args.K);
  if (args.N % 8 != 0) return "sm90 int8_gemm: N must be a multiple of 8, got " + std::to_string(args.N);
  return sm90::kConfigs[config](args.out_dtype).run(args);
}

}  // namespace zq
