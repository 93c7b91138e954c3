// sm90 int8 GEMM tile config "swap_128x64x256_coop_sk": M 33-64, swap-AB with stream-K.
// One translation unit per config so the build parallelises; the template is sm90_int8_gemm.cuh.
#include "sm90_int8_gemm.cuh"

namespace zq::sm90 {
namespace {
using Cfg = Config<Shape<_128, _64, _256>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative, cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler, true>;
}  // namespace

GemmEntry entry_swap_128x64x256_coop_sk(DType out_dtype) { return EntryPair<Cfg>::make("swap_128x64x256_coop_sk", out_dtype); }

}  // namespace zq::sm90
