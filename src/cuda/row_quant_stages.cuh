// row_quant_stages.cuh: the per-element pieces of the row-op + quantization kernels of row_quant.cu
// (type conversions, reductions, the quantized byte and its scale, stage 1 and stage 2 of each row
// op). Included by row_quant.cu only; the math is documented at the top of that file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cooperative_groups.h>

#include <cstdint>

#include "float_convert.cuh"
#include "pdl.cuh"
#include "row_reduce.cuh"
#include "zq_kernels.h"

namespace zq {
namespace {

int g_threads_override = 0;  // 0 = automatic; 128/256/512/1024 for tuning experiments
int g_cluster_override = -1;  // CTAs per row at few rows: -1 automatic, 0 / 1 never, 2 / 4 / 8 forced
constexpr int kStreamThreads = 256;


// Max over the `lanes` adjacent lanes (a power of two <= 32, aligned) of one group; every lane of the
// warp calls it (full-mask shuffles), each gets its own group's result.
__device__ __forceinline__ float group_reduce(float v, int lanes) {
  for (int o = lanes >> 1; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Group output: the writer of group j's scale of the last row also zeroes the column's padding rows
// M .. min(stride, round_up(M, 4)) - 1, so the GEMM's TMA-aligned scale tile holds no garbage.
__device__ __forceinline__ void zero_scale_padding(float* col, int m, int M, int64_t stride) {
  if (m != M - 1) return;
  const int64_t end = min(stride, static_cast<int64_t>((M + 3) & ~3));
  for (int64_t p = M; p < end; ++p) col[p] = 0.f;
}

template <int VEC>
__device__ __forceinline__ void store_q(int8_t* dst, const int8_t (&q)[VEC]) {
  if constexpr (VEC == 8) {
    *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(q);
  } else if constexpr (VEC == 4) {
    *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(q);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dst[j] = q[j];
  }
}

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_tanh(float v) {
  const float inner = 0.79788456080286536f * (v + 0.044715f * v * v * v);
  return 0.5f * v * (1.0f + tanhf(inner));
}
__device__ __forceinline__ float silu(float v) { return v / (1.0f + __expf(-v)); }

// The gated ops' activation of the gate (one kernel serves the three: `gate` is the call's op,
// uniform over the grid, so the branch costs no divergence).
__device__ __forceinline__ float gate_act(RowOp gate, float g) {
  return gate == RowOp::kGeluTanhMul ? gelu_tanh(g) : gate == RowOp::kGeluMul ? gelu_erf(g) : silu(g);
}

// VEC consecutive fp32 parameters (weight / bias) starting at p: 16-byte loads when VEC is a
// multiple of 4 (the vector path requires 16-byte aligned parameters), else scalar; zeros for null.
template <int VEC>
__device__ __forceinline__ void load_params(const float* p, float (&out)[VEC]) {
  if (p == nullptr) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = 0.f;
  } else if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(p) + q);
      out[4 * q] = f.x, out[4 * q + 1] = f.y, out[4 * q + 2] = f.z, out[4 * q + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = __ldg(p + j);
  }
}

// The kernel's view of one call (device pointers already offset to row m by the kernel).
template <typename T>
struct Row {
  const T* x;         // row of x (gated ops: gate at [0, K), up at [K, 2K))
  const T* res;       // row of residual or nullptr
  T* res_out;         // row of residual_out or nullptr
  const float* w;     // weight [K] or nullptr
  const float* b;     // bias [K] (norm beta, or the GeLU bias) or nullptr
  RowOp gate;         // the gated ops' kernel (kSiluMul): which activation (kSiluMul, kGeluMul, kGeluTanhMul)
};

// Stage 1 for VEC consecutive elements starting at k; `from_sum` reads the already-written sum
// (residual_out) instead of recomputing x + residual. kStoreSum = false leaves the kSum write of
// x + residual to the caller: residual_out may alias the residual, so a store here orders every
// later load of the thread after it (the register-resident path issues all its loads first).
template <RowOp kOp, typename T, int VEC, bool kStoreSum = true>
__device__ __forceinline__ void stage1(const Row<T>& r, int K, int k, bool from_sum, ResidualMode mode,
                                       T (&v)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    const T* src = from_sum ? r.res_out : r.x;
    uint4 u = *reinterpret_cast<const uint4*>(src + k);
    const T* e = reinterpret_cast<const T*>(&u);
    if constexpr (kOp == RowOp::kSiluMul) {
      uint4 w = *reinterpret_cast<const uint4*>(r.x + K + k);
      const T* up = reinterpret_cast<const T*>(&w);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = from_float<T>(gate_act(r.gate, to_float(e[j])) * to_float(up[j]));
      return;
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = e[j];
    }
  } else {
    const T* src = from_sum ? r.res_out : r.x;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if constexpr (kOp == RowOp::kSiluMul) {
        v[j] = from_float<T>(gate_act(r.gate, to_float(src[k + j])) * to_float(r.x[K + k + j]));
      } else {
        v[j] = src[k + j];
      }
    }
    if constexpr (kOp == RowOp::kSiluMul) return;
  }
  if constexpr (kOp == RowOp::kGelu || kOp == RowOp::kGeluTanh) {
    float bv[VEC];
    load_params<VEC>(r.b != nullptr ? r.b + k : nullptr, bv);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float f = to_float(v[j]) + bv[j];
      v[j] = from_float<T>(kOp == RowOp::kGelu ? gelu_erf(f) : gelu_tanh(f));
    }
  }
  if constexpr (kOp == RowOp::kRMSNorm || kOp == RowOp::kLayerNorm) {
    if (!from_sum && r.res != nullptr) {
      T rv[VEC];
      if constexpr (VEC * sizeof(T) == 16) {
        *reinterpret_cast<uint4*>(rv) = *reinterpret_cast<const uint4*>(r.res + k);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) rv[j] = r.res[k + j];
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = from_float<T>(to_float(v[j]) + to_float(rv[j]));
      if (kStoreSum && mode == ResidualMode::kSum) {
        if constexpr (VEC * sizeof(T) == 16) {
          *reinterpret_cast<uint4*>(r.res_out + k) = *reinterpret_cast<const uint4*>(v);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) r.res_out[k + j] = v[j];
        }
      }
    }
  }
}

// Per-row statistics of the normalisation (mean and 1 / rms or 1 / std), set by the kernel.
struct Stats {
  float mean = 0.f, rstd = 1.f;
};

// The fp32 parameters stage 2 of the VEC elements at k reads: the norm weight (and LayerNorm's bias);
// none for the other ops. Loaded apart from stage 2 so that the register path requests them with the
// row, before its reductions, instead of one more round trip after them.
template <RowOp kOp, int VEC>
struct Params {
  float w[VEC], b[VEC];
  __device__ __forceinline__ void load(const float* wp, const float* bp, int k) {
    if constexpr (kOp == RowOp::kRMSNorm || kOp == RowOp::kLayerNorm) {
      load_params<VEC>(wp + k, w);
      load_params<VEC>(kOp == RowOp::kLayerNorm && bp != nullptr ? bp + k : nullptr, b);
    }
  }
};

// Stage 2 of VEC consecutive elements with their parameters: y = norm(v) (or v), in fp32.
template <RowOp kOp, typename T, int VEC>
__device__ __forceinline__ void stage2(const T (&v)[VEC], const Params<kOp, VEC>& p, const Stats& s,
                                       float (&y)[VEC]) {
  if constexpr (kOp == RowOp::kRMSNorm || kOp == RowOp::kLayerNorm) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) y[j] = (to_float(v[j]) - s.mean) * s.rstd * p.w[j] + p.b[j];
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) y[j] = to_float(v[j]);
  }
}

// Stage 2 of VEC consecutive elements starting at k, loading their parameters.
template <RowOp kOp, typename T, int VEC>
__device__ __forceinline__ void stage2(const T (&v)[VEC], int k, const float* w, const float* b,
                                       const Stats& s, float (&y)[VEC]) {
  Params<kOp, VEC> p;
  p.load(w, b, k);
  stage2<kOp, T, VEC>(v, p, s, y);
}

__host__ __device__ constexpr bool is_norm(RowOp op) { return op == RowOp::kRMSNorm || op == RowOp::kLayerNorm; }

}  // namespace
}  // namespace zq
