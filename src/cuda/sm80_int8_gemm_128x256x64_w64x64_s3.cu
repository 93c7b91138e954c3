// sm80 int8 GEMM tile config "128x256x64_w64x64_s3": large M: CUTLASS's own sm_80 int8 default tile; 8 warps, 72 KiB smem, highest reuse per smem byte.
// One translation unit per config so the build parallelises; the template is sm80_int8_gemm.cuh
// (what it computes, limits, how to test and time). Instantiates the bf16 and fp16 outputs.
#include "sm80_int8_gemm.cuh"

namespace zq::sm80 {
namespace {
using Cfg = Config<cutlass::gemm::GemmShape<128, 256, 64>,  // threadblock tile (M, N, K)
                   cutlass::gemm::GemmShape<64, 64, 64>,   // warp tile
                   3>;                                     // smem pipeline stages
}  // namespace

GemmEntry entry_128x256x64_w64x64_s3(DType out_dtype) { return EntryPair<Cfg>::make("128x256x64_w64x64_s3", out_dtype); }

}  // namespace zq::sm80
