// sm90 int8 GEMM tile config "128x128x128_c2x1_pp": medium M: ping-pong warpgroups overlap one tile's epilogue with the other's mainloop.
// One translation unit per config so the build parallelises; the template is sm90_int8_gemm.cuh.
#include "sm90_int8_gemm.cuh"

namespace zq::sm90 {
namespace {
using Cfg = Config<Shape<_128, _128, _128>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized, void, false>;
}  // namespace

GemmEntry entry_128x128x128_c2x1_pp(DType out_dtype) { return EntryPair<Cfg>::make("128x128x128_c2x1_pp", out_dtype); }

}  // namespace zq::sm90
