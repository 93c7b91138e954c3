// sm80_int8_gemm_dispatch.cu: the sm80 int8 GEMM config table and its M-bucket dispatch.
// Host code only; each config's kernels live in sm80_int8_gemm_<config>.cu, the template (what it
// computes, limits, build flags) in sm80_int8_gemm.cuh.
//
// Test: the GPU GEMM tests sweep every config of backend "sm80" (on an A100, or on an H100, which
// runs these mma.sync kernels from their sm_90 SASS); time: the W8A8 benchmark, backend "sm80".
#include <cstdint>
#include <string>

#include "gemm_registry.h"
#include "zq_kernels.h"

namespace zq {
namespace sm80 {
// Defined one per translation unit. Names: threadblock tile MxNxK, warp tile MxN (warp K = tile
// K), smem pipeline stages.
GemmEntry entry_128x256x64_w64x64_s3(DType);
GemmEntry entry_128x128x64_w64x64_s5(DType);
GemmEntry entry_64x64x128_w32x32_s5(DType);
GemmEntry entry_32x64x128_w32x32_s6(DType);

namespace {
using EntryFn = GemmEntry (*)(DType);
// Index = config id (stable within a build; tests and benchmarks sweep all of them).
constexpr EntryFn kConfigs[] = {
    entry_128x256x64_w64x64_s3,  // 0: large M
    entry_128x128x64_w64x64_s5,  // 1: mid-large M
    entry_64x64x128_w32x32_s5,   // 2: medium M
    entry_32x64x128_w32x32_s6,   // 3: small M (decode)
};
constexpr int kNumConfigs = sizeof(kConfigs) / sizeof(kConfigs[0]);
}  // namespace
}  // namespace sm80

int sm80_int8_gemm_num_configs() { return sm80::kNumConfigs; }

const char* sm80_int8_gemm_config_name(int config) {
  if (config < 0 || config >= sm80::kNumConfigs) return nullptr;
  return sm80::kConfigs[config](DType::kBF16).name;
}

// M buckets (not yet measured; the reasoning, for an A100's 108 SMs and N ~ 4096):
//   M <= 32    decode: bound by streaming the weight once. One 32-row M tile, 64-wide N tiles
//              (N / 64 CTAs), deep pipeline.
//   M <= 128   still mostly weight-bandwidth bound; 64x64 tiles give (M / 64) * (N / 64) CTAs,
//              enough to occupy the SMs where 64x128 or 128x128 tiles would leave most idle.
//   M <= 512   tensor-core bound, but 128x256 tiles would give fewer CTAs than SMs
//              (M = 512, N = 4096: 64 CTAs); 128x128 doubles that.
//   M > 512    128x256x64: the most reuse per byte of smem traffic, enough tiles to fill waves.
int sm80_int8_gemm_auto_config(int M, int /*N*/, int /*K*/) {
  if (M <= 32) return 3;   // 32x64x128_w32x32_s6
  if (M <= 128) return 2;  // 64x64x128_w32x32_s5
  if (M <= 512) return 1;  // 128x128x64_w64x64_s5
  return 0;                // 128x256x64_w64x64_s3
}

size_t sm80_int8_gemm_workspace_size(const Int8GemmArgs& args, int config) {
  if (config < 0 || config >= sm80::kNumConfigs) return 0;
  if (args.out_dtype != DType::kBF16 && args.out_dtype != DType::kFP16) return 0;
  return sm80::kConfigs[config](args.out_dtype).workspace_size(args);
}

std::string sm80_int8_gemm_run(const Int8GemmArgs& args, int config) {
  const std::string err = check_int8_gemm_args("sm80", args, config, sm80::kNumConfigs);
  if (!err.empty()) return err;
  return sm80::kConfigs[config](args.out_dtype).run(args);
}

}  // namespace zq
