// gemm_registry.h: what every GEMM family shares on the host side: the argument checks run before
// any launch (one copy, so the families cannot drift apart) and the int32 accumulator bound.
// Kept apart from the CUTLASS templates so that host-only translation units stay light.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "zq_kernels.h"

namespace zq {

// The largest K whose int32 dot product cannot wrap when both operands may hold any int8 value
// including -128: K * 128 * 128 <= 2^31 - 1 (docs/SCALES.md). The Python layer raises past it.
constexpr int kInt8MaxK = 2147483647 / (128 * 128);  // 131071

// Bytes per bias element: the output type, except for int8 output, whose bias is float32 (an int8
// bias would need a scale of its own; the epilogue adds bias in fp32 before quantizing anyway).
inline size_t bias_bytes(DType out) {
  return out == DType::kBF16 || out == DType::kFP16 ? 2 : 4;
}

// Checks every 8-bit x 8-bit GEMM (int8 or e4m3 operands) runs before launching; max_k is the
// recipe's bound on K (kInt8MaxK for int32 accumulators). The mainloops read a / b in 16-byte pieces
// (TMA or cp.async) and the epilogues write 16-byte output vectors, so a violation would be a
// sticky device fault or a silently wrong answer; sa / sb / bias are read element-wise and need
// only natural alignment. Returns "" when the launch may go ahead, else "<what is wrong>".
inline std::string check_gemm_args(const GemmArgs& a, int max_k) {
  const auto aligned = [](const void* p, uintptr_t bytes) {
    return p != nullptr && reinterpret_cast<uintptr_t>(p) % bytes == 0;
  };
  if (a.M <= 0) return "M must be > 0, got " + std::to_string(a.M);
  if (a.N <= 0) return "N must be > 0, got " + std::to_string(a.N);
  if (a.K <= 0) return "K must be > 0, got " + std::to_string(a.K);
  if (a.K % 16 != 0) return "K must be a multiple of 16, got " + std::to_string(a.K);
  if (a.K > max_k) return "K must be <= " + std::to_string(max_k) + " (int32 accumulator), got " + std::to_string(a.K);
  if (a.N % 8 != 0) return "N must be a multiple of 8, got " + std::to_string(a.N);
  if (a.lda < a.K || a.lda % 16 != 0) return "lda must be >= K and a multiple of 16, got " + std::to_string(a.lda);
  if (a.ldb < a.K || a.ldb % 16 != 0) return "ldb must be >= K and a multiple of 16, got " + std::to_string(a.ldb);
  if (!aligned(a.a, 16)) return "a (xq) must be a 16-byte aligned device pointer";
  if (!aligned(a.b, 16)) return "b (wq) must be a 16-byte aligned device pointer";
  if (!aligned(a.out, 16)) return "out must be a 16-byte aligned device pointer";
  if (!aligned(a.sa, 4)) return "sa (sx) must be a 4-byte aligned device pointer";
  if (!aligned(a.sb, 4)) return "sb (sw) must be a 4-byte aligned device pointer";
  const int act = static_cast<int>(a.activation);
  if (act < 0 || act > 3) return "activation code must be 0..3 (none, gelu, gelu_tanh, silu), got " + std::to_string(act);
  if (a.out_dtype == DType::kInt8) {
    // 16-byte output rows of 1-byte elements (TMA store / 16-byte vector stores).
    if (a.N % 16 != 0) return "N must be a multiple of 16 for int8 output, got " + std::to_string(a.N);
    if (!(a.out_scale > 0.f) || !std::isfinite(a.out_scale)) {
      return "out_scale must be finite and > 0 for int8 output, got " + std::to_string(a.out_scale);
    }
  }
  if (a.bias != nullptr && !aligned(a.bias, bias_bytes(a.out_dtype))) return "bias must be element-aligned (or null)";
  return {};
}

// The registry row of one GEMM instantiation G (a struct with static can_implement /
// workspace_size / run);
// each family's make_<recipe>() calls this from the generated translation units.
template <class G>
GemmKernel make_gemm_kernel(const char* arch, const char* recipe, const char* tile, DType out, bool dispatched) {
  return {arch, recipe, tile, out, dispatched, &G::can_implement, &G::workspace_size, &G::run};
}

// The message of a failed launch: CUTLASS's status plus the CUDA error it left behind.
inline std::string launch_failure(const char* status) {
  const cudaError_t e = cudaGetLastError();
  return std::string("CUTLASS launch failed: ") + status + " (" + cudaGetErrorString(e) + ")";
}

}  // namespace zq
