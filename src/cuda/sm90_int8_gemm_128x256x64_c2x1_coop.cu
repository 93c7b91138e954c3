// sm90 int8 GEMM tile config "128x256x64_c2x1_coop": large-M alternative (config 8). A 64-deep K tile
// doubles the pipeline stages of config 0; it won a round-robin timing by 3-8% and lost the full
// benchmark by 1-4% on an H100 under its power cap (docs/PERF_NOTES.md), so it is not the default.
// One translation unit per config so the build parallelises; the template is sm90_int8_gemm.cuh.
#include "sm90_int8_gemm.cuh"

namespace zq::sm90 {
namespace {
using Cfg = Config<Shape<_128, _256, _64>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative, cutlass::epilogue::TmaWarpSpecializedCooperative, void, false>;
}  // namespace

GemmEntry entry_128x256x64_c2x1_coop(DType out_dtype) { return EntryPair<Cfg>::make("128x256x64_c2x1_coop", out_dtype); }

}  // namespace zq::sm90
