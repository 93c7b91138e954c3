// gemm_registry.h: the type-erased handle a GEMM tile config exposes to its backend's dispatch.
// Keeping it apart from the CUTLASS templates lets the dispatch translation units stay light.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "zq_kernels.h"

namespace zq {

struct GemmEntry {
  const char* name;                                   // e.g. "128x256x128_c2x1_coop"
  size_t (*workspace_size)(const Int8GemmArgs&);      // scratch bytes for this problem
  std::string (*run)(const Int8GemmArgs&);            // "" on success
};

// The argument checks every int8 GEMM backend runs before launching (one copy, so the backends
// cannot drift apart). The mainloops read xq / wq in 16-byte pieces (TMA or cp.async) and the
// epilogues write 16-byte output vectors, so a violation here would be a sticky device fault or a
// silently wrong answer; sx / sw / bias are read element-wise and need only natural alignment.
// Returns "" when the launch may go ahead, else "<backend> int8_gemm: <what is wrong>".
inline std::string check_int8_gemm_args(const char* backend, const Int8GemmArgs& a, int config,
                                        int num_configs) {
  const std::string op = std::string(backend) + " int8_gemm: ";
  const auto aligned = [](const void* p, uintptr_t bytes) {
    return p != nullptr && reinterpret_cast<uintptr_t>(p) % bytes == 0;
  };
  if (config < 0 || config >= num_configs) {
    return op + "config " + std::to_string(config) + " out of range [0, " + std::to_string(num_configs) + ")";
  }
  if (a.out_dtype != DType::kBF16 && a.out_dtype != DType::kFP16) {
    return op + "out_dtype must be bf16 (0) or fp16 (1), got " + std::to_string(static_cast<int>(a.out_dtype));
  }
  if (a.M <= 0) return op + "M must be > 0, got " + std::to_string(a.M);
  if (a.N <= 0) return op + "N must be > 0, got " + std::to_string(a.N);
  if (a.K <= 0) return op + "K must be > 0, got " + std::to_string(a.K);
  if (a.K % 16 != 0) return op + "K must be a multiple of 16, got " + std::to_string(a.K);
  if (a.N % 8 != 0) return op + "N must be a multiple of 8, got " + std::to_string(a.N);
  if (!aligned(a.xq, 16)) return op + "xq must be a 16-byte aligned device pointer";
  if (!aligned(a.wq, 16)) return op + "wq must be a 16-byte aligned device pointer";
  if (!aligned(a.out, 16)) return op + "out must be a 16-byte aligned device pointer";
  if (!aligned(a.sx, 4)) return op + "sx must be a 4-byte aligned device pointer";
  if (!aligned(a.sw, 4)) return op + "sw must be a 4-byte aligned device pointer";
  if (a.bias != nullptr && !aligned(a.bias, 2)) return op + "bias must be 2-byte aligned (or null)";
  return {};
}

}  // namespace zq
