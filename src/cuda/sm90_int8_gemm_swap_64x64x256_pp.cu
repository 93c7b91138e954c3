// sm90 int8 GEMM tile config "swap_64x64x256_pp": M 33-64, swap-AB: one 64-token tile, so each weight tile is read from DRAM once.
// One translation unit per config so the build parallelises; the template is sm90_int8_gemm.cuh.
#include "sm90_int8_gemm.cuh"

namespace zq::sm90 {
namespace {
using Cfg = Config<Shape<_64, _64, _256>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized, void, true>;
}  // namespace

GemmEntry entry_swap_64x64x256_pp(DType out_dtype) { return EntryPair<Cfg>::make("swap_64x64x256_pp", out_dtype); }

}  // namespace zq::sm90
