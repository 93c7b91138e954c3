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

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
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
  const std::string op = "sm80 int8_gemm: ";
  if (config < 0 || config >= sm80::kNumConfigs) {
    return op + "config " + std::to_string(config) + " out of range [0, " +
           std::to_string(sm80::kNumConfigs) + ")";
  }
  if (args.out_dtype != DType::kBF16 && args.out_dtype != DType::kFP16) {
    return op + "out_dtype must be bf16 (0) or fp16 (1), got " +
           std::to_string(static_cast<int>(args.out_dtype));
  }
  if (args.M <= 0) return op + "M must be > 0, got " + std::to_string(args.M);
  if (args.N <= 0) return op + "N must be > 0, got " + std::to_string(args.N);
  if (args.K <= 0) return op + "K must be > 0, got " + std::to_string(args.K);
  if (args.K % 16 != 0) return op + "K must be a multiple of 16, got " + std::to_string(args.K);
  if (args.N % 8 != 0) return op + "N must be a multiple of 8, got " + std::to_string(args.N);
  // The mainloop reads xq / wq with 16-byte cp.async and the epilogue writes 16-byte vectors: a
  // misaligned base would be a sticky device fault, so refuse it here with a message instead.
  // sx / sw / bias are read element-wise and need only their natural alignment.
  if (args.xq == nullptr || !sm80::aligned(args.xq, 16)) return op + "xq must be a 16-byte aligned device pointer";
  if (args.wq == nullptr || !sm80::aligned(args.wq, 16)) return op + "wq must be a 16-byte aligned device pointer";
  if (args.out == nullptr || !sm80::aligned(args.out, 16)) return op + "out must be a 16-byte aligned device pointer";
  if (args.sx == nullptr || !sm80::aligned(args.sx, 4)) return op + "sx must be a 4-byte aligned device pointer";
  if (args.sw == nullptr || !sm80::aligned(args.sw, 4)) return op + "sw must be a 4-byte aligned device pointer";
  if (args.bias != nullptr && !sm80::aligned(args.bias, 2)) return op + "bias must be 2-byte aligned (or null)";
  return sm80::kConfigs[config](args.out_dtype).run(args);
}

}  // namespace zq
