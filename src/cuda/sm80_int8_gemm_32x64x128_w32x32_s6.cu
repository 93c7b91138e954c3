// sm80 int8 GEMM tile config "32x64x128_w32x32_s6": small M (decode): weight-bandwidth bound; one 32-row M tile, 64-wide N tiles, 6 stages = 5 x 8 KiB of weight in flight per CTA; 2 warps, 72 KiB smem.
// One translation unit per config so the build parallelises; the template is sm80_int8_gemm.cuh
// (what it computes, limits, how to test and time). Instantiates the bf16 and fp16 outputs.
#include "sm80_int8_gemm.cuh"

namespace zq::sm80 {
namespace {
using Cfg = Config<cutlass::gemm::GemmShape<32, 64, 128>,  // threadblock tile (M, N, K)
                   cutlass::gemm::GemmShape<32, 32, 128>,   // warp tile
                   6>;                                     // smem pipeline stages
}  // namespace

GemmEntry entry_32x64x128_w32x32_s6(DType out_dtype) { return EntryPair<Cfg>::make("32x64x128_w32x32_s6", out_dtype); }

}  // namespace zq::sm80
