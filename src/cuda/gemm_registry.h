// gemm_registry.h: the type-erased handle a GEMM tile config exposes to its backend's dispatch.
// Keeping it apart from the CUTLASS templates lets the dispatch translation units stay light.
#pragma once

#include <cstddef>
#include <string>

#include "zq_kernels.h"

namespace zq {

struct GemmEntry {
  const char* name;                                   // e.g. "128x256x128_c2x1_coop"
  size_t (*workspace_size)(const Int8GemmArgs&);      // scratch bytes for this problem
  std::string (*run)(const Int8GemmArgs&);            // "" on success
};

}  // namespace zq
