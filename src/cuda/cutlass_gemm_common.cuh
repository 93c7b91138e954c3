// cutlass_gemm_common.cuh: host-side pieces every CUTLASS-based GEMM family shares (needs CUTLASS,
// unlike gemm_registry.h, so it stays out of the host-only translation units).
#pragma once

#include <string>

#include "cutlass/cutlass.h"

#include "gemm_registry.h"

namespace zq {

// can_implement of an int8 x int8 family: the shared argument checks, then CUTLASS's own.
// G: one instantiation of the family, with `Gemm` (a CUTLASS device adapter) and a static
// make_arguments(const GemmArgs&).
template <class G>
std::string int8_cutlass_can_implement(const GemmArgs& a) {
  std::string err = check_int8_gemm_args(a);
  if (!err.empty()) return err;
  const cutlass::Status st = G::Gemm::can_implement(G::make_arguments(a));
  if (st != cutlass::Status::kSuccess) {
    return std::string("CUTLASS cannot run this problem: ") + cutlassGetStatusString(st);
  }
  return {};
}

}  // namespace zq
