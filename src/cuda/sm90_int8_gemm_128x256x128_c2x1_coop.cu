// sm90 int8 GEMM tile config "128x256x128_c2x1_coop": large M (the default above M = 512): 2 consumer
// warpgroups share a 128x256 tile; the 2x1 cluster multicasts each weight tile to both CTAs.
// One translation unit per config so the build parallelises; the template is sm90_int8_gemm.cuh.
#include "sm90_int8_gemm.cuh"

namespace zq::sm90 {
namespace {
using Cfg = Config<Shape<_128, _256, _128>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative, cutlass::epilogue::TmaWarpSpecializedCooperative, void, false>;
}  // namespace

GemmEntry entry_128x256x128_c2x1_coop(DType out_dtype) { return EntryPair<Cfg>::make("128x256x128_c2x1_coop", out_dtype); }

}  // namespace zq::sm90
