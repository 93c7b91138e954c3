// sm80 int8 GEMM tile config "64x64x128_w32x32_s5": medium M: small tiles keep >= ~100 CTAs busy streaming the weight; 4 warps, 80 KiB smem (2 CTAs/SM on A100).
// One translation unit per config so the build parallelises; the template is sm80_int8_gemm.cuh
// (what it computes, limits, how to test and time). Instantiates the bf16 and fp16 outputs.
#include "sm80_int8_gemm.cuh"

namespace zq::sm80 {
namespace {
using Cfg = Config<cutlass::gemm::GemmShape<64, 64, 128>,  // threadblock tile (M, N, K)
                   cutlass::gemm::GemmShape<32, 32, 128>,   // warp tile
                   5>;                                     // smem pipeline stages
}  // namespace

GemmEntry entry_64x64x128_w32x32_s5(DType out_dtype) { return EntryPair<Cfg>::make("64x64x128_w32x32_s5", out_dtype); }

}  // namespace zq::sm80
