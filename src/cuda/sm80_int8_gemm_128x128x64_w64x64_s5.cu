// sm80 int8 GEMM tile config "128x128x64_w64x64_s5": mid-large M: half the N width of the large tile, so twice the CTAs; 4 warps, 80 KiB smem (2 CTAs/SM on A100).
// One translation unit per config so the build parallelises; the template is sm80_int8_gemm.cuh
// (what it computes, limits, how to test and time). Instantiates the bf16 and fp16 outputs.
#include "sm80_int8_gemm.cuh"

namespace zq::sm80 {
namespace {
using Cfg = Config<cutlass::gemm::GemmShape<128, 128, 64>,  // threadblock tile (M, N, K)
                   cutlass::gemm::GemmShape<64, 64, 64>,   // warp tile
                   5>;                                     // smem pipeline stages
}  // namespace

GemmEntry entry_128x128x64_w64x64_s5(DType out_dtype) { return EntryPair<Cfg>::make("128x128x64_w64x64_s5", out_dtype); }

}  // namespace zq::sm80
