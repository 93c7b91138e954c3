// sm90 int8 GEMM tile config "64x128x128_c1x2_pp": M around 64-128: a 64-row tile wastes less of the wgmma M=64 minimum; 1x2 cluster multicasts the activation tile.
// One translation unit per config so the build parallelises; the template is sm90_int8_gemm.cuh.
#include "sm90_int8_gemm.cuh"

namespace zq::sm90 {
namespace {
using Cfg = Config<Shape<_64, _128, _128>, Shape<_1, _2, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized, void, false>;
}  // namespace

GemmEntry entry_64x128x128_c1x2_pp(DType out_dtype) { return EntryPair<Cfg>::make("64x128x128_c1x2_pp", out_dtype); }

}  // namespace zq::sm90
