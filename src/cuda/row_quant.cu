// row_quant.cu: every "row op, then token-wise INT8 or FP8 quantization" kernel, from one template.
//
// One CTA per row m. Per element k of the row, in fp32 (docs/SCALES.md, docs/FUSED.md):
//   stage 1  v[k] = the row op's input value, rounded to the input type T (as the unfused torch
//            sequence materialises it):
//              kIdentity   x[k]                        (quantize_per_token: no rounding at all)
//              kRMSNorm /  x[k] (+ residual[k])        (the sum is written to residual_out when
//              kLayerNorm                               residual_mode == kSum: pre-LN blocks)
//              kGelu       gelu(x[k] + bias[k])        (erf GeLU)
//              kGeluTanh   gelu_tanh(x[k] + bias[k])
//              kSiluMul    silu(x[k]) * x[K + k]       (x holds [gate | up], 2K wide)
//   stage 2  y[k] = rms / layer normalisation of v with fp32 weight (and bias); y = v otherwise.
//            residual_mode == kNormed writes round_T(y) to residual_out (post-LN blocks).
//   stage 3  sx = amax(y) / 127, q[k] = clamp(rint(y[k] * (127 / amax)), -127, 127), exactly as
//            quantize_per_token (NaN-propagating amax, zero rows -> 0, rows below 2^-64 pre-scaled);
//            FP8 E4M3 output (out == kFP8E4M3): sx = amax / 448, q[k] = e4m3_satfinite(y[k] * (448 /
//            amax)) rounded to nearest even (docs/FP8.md).
// python/zqkernels/reference/fused.py is the same math in torch.
//
// Memory: x (and residual) read once, q (and residual_out) written once. When the row fits, the
// stage-1 values stay in registers, packed in T (16 bytes per 8 bf16 / fp16 or 4 fp32 values),
// through the statistics, amax and quantization passes: <= 4 vectors per thread, 128..1024 threads
// per CTA, the smallest CTA that holds the row (more vectors per thread cost registers, hence
// resident CTAs, hence loads in flight: measured for quantize_per_token, docs/PERF_NOTES.md).
// Rows that do not fit, or that are not 16-byte aligned, take the streaming path: each pass
// re-reads the row (from L2, mostly) and recomputes stage 1 (from residual_out once the sum has
// been written there, so residual_out may alias residual).
//
// Limits: any M, K >= 1; x / residual rows may be strided (unit stride along K); weight, bias
// fp32 [K] with element alignment; q [M, K] contiguous; residual_out rows strided.
// Test: tests/test_fused_gpu.py, tests/test_quantize_gpu.py; time: benchmarks/bench_fused.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <string>

#include "zq_kernels.h"

namespace zq {
namespace {

int g_threads_override = 0;  // 0 = automatic; 128/256/512/1024 for tuning experiments
constexpr int kStreamThreads = 256;

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// max(|.|) that propagates NaN (fmaxf would drop it and hide bad input behind a finite scale).
__device__ __forceinline__ float nan_max(float m, float v) {
  v = fabsf(v);
  return (v > m || v != v) ? v : m;
}
struct AbsMax {
  __device__ float operator()(float a, float b) const { return nan_max(a, b); }
};
struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// Reduction over one row's threads: a warp (kWarpRow) or the whole CTA (blockDim.x a multiple of
// 32, <= 1024). Every thread gets the result, combined in a fixed order (deterministic for a given
// launch shape). smem is reusable on return.
template <bool kWarpRow, class Op>
__device__ __forceinline__ float row_reduce(float v, Op op) {
  if constexpr (kWarpRow) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
  }
  __shared__ float part[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = part[0];
  for (int w = 1; w < warps; ++w) v = op(v, part[w]);
  __syncthreads();
  return v;
}

// Lets a kernel launched after this one with programmatic dependent launch (the int8 GEMM) start
// its prologue while this grid's last CTAs finish. Only a scheduling hint: the GEMM's
// griddepcontrol.wait returns once this whole grid has completed and its writes are visible, so
// correctness never depends on where the trigger sits (docs/PERF_NOTES.md).
// tests/test_gemm_gpu.py::test_pdl_gemm_waits_for_a_late_producer guards the wait.
__device__ __forceinline__ void allow_dependents_to_launch() {
  __syncthreads();  // the whole CTA's stores precede its trigger
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

constexpr float kTiny = 0x1p-64f;  // rows with amax below this are pre-scaled by 2^64 (exact)
constexpr float kTinyScale = 0x1p64f;

// The quantized byte of one value: INT8 clamp(rint(y * inv), -127, 127) (round half to even, like
// torch.round), or FP8 E4M3 of y * inv rounded to nearest even and saturated to +-448 (cvt.rn.satfinite,
// as torch's cast after a clamp). `fp8` is uniform over the grid (a kernel parameter): one branch,
// never divergent, and no second instantiation of every kernel.
__device__ __forceinline__ int8_t quant(float v, float inv, float pre, bool fp8) {
  const float y = (v * pre) * inv;
  if (fp8) return static_cast<int8_t>(__nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3));
  int q = __float2int_rn(y);
  q = max(-127, min(127, q));
  return static_cast<int8_t>(q);
}

// Scale from amax; thread `tid` 0 of the row writes sx = amax / qmax (qmax: 127 for INT8, 448 for
// FP8 E4M3). Returns the multiplier `inv` and the pre-scale `pre` (1, or 2^64 for tiny rows):
// q = quant((y * pre) * inv).
__device__ __forceinline__ float finish_scale(float amax, float* sx_row, float& pre, int tid, float qmax) {
  if (tid == 0) *sx_row = amax / qmax;
  pre = amax < kTiny ? kTinyScale : 1.0f;
  return amax == 0.f ? 0.f : qmax / (amax * pre);
}

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_tanh(float v) {
  const float inner = 0.79788456080286536f * (v + 0.044715f * v * v * v);
  return 0.5f * v * (1.0f + tanhf(inner));
}
__device__ __forceinline__ float silu(float v) { return v / (1.0f + __expf(-v)); }

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
  const T* x;         // row of x (kSiluMul: gate at [0, K), up at [K, 2K))
  const T* res;       // row of residual or nullptr
  T* res_out;         // row of residual_out or nullptr
  const float* w;     // weight [K] or nullptr
  const float* b;     // bias [K] (norm beta, or the GeLU bias) or nullptr
};

// Stage 1 for VEC consecutive elements starting at k; `from_sum` reads the already-written sum
// (residual_out) instead of recomputing x + residual.
template <RowOp kOp, typename T, int VEC>
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
      for (int j = 0; j < VEC; ++j) v[j] = from_float<T>(silu(to_float(e[j])) * to_float(up[j]));
      return;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = e[j];
  } else {
    const T* src = from_sum ? r.res_out : r.x;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if constexpr (kOp == RowOp::kSiluMul) {
        v[j] = from_float<T>(silu(to_float(src[k + j])) * to_float(r.x[K + k + j]));
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
      if (mode == ResidualMode::kSum) {
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

// Stage 2 of one element.
// Stage 2 of VEC consecutive elements starting at k: y = norm(v) (or v), in fp32.
template <RowOp kOp, typename T, int VEC>
__device__ __forceinline__ void stage2(const T (&v)[VEC], int k, const float* w, const float* b, const Stats& s,
                                       float (&y)[VEC]) {
  if constexpr (kOp == RowOp::kRMSNorm || kOp == RowOp::kLayerNorm) {
    float wv[VEC], bv[VEC];
    load_params<VEC>(w + k, wv);
    load_params<VEC>(kOp == RowOp::kLayerNorm && b != nullptr ? b + k : nullptr, bv);
#pragma unroll
    for (int j = 0; j < VEC; ++j) y[j] = (to_float(v[j]) - s.mean) * s.rstd * wv[j] + bv[j];
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) y[j] = to_float(v[j]);
  }
}

__host__ __device__ constexpr bool is_norm(RowOp op) { return op == RowOp::kRMSNorm || op == RowOp::kLayerNorm; }

// kIters > 0: register-resident (kIters chunks of VEC per thread cover the row).
// kIters == 0: streaming (any K; each pass re-reads and recomputes stage 1).
// kWarpRow: each warp owns one row (narrow rows: reductions are shuffles, no CTA barrier);
// otherwise the CTA owns one row.
template <typename T, RowOp kOp, int VEC, int kIters, bool kWarpRow>
__global__ void __launch_bounds__(kWarpRow ? 128 : 1024)
row_quant_kernel(RowQuantArgs a) {
  const int m = kWarpRow ? blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32 : blockIdx.x;
  if (kWarpRow && m >= a.M) return;  // whole warps only; warp rows use no CTA barrier
  const int tid = kWarpRow ? threadIdx.x % 32 : threadIdx.x;
  const int K = a.K;
  Row<T> r;
  r.x = static_cast<const T*>(a.x) + m * a.x_stride;
  r.res = a.residual != nullptr ? static_cast<const T*>(a.residual) + m * a.residual_stride : nullptr;
  r.res_out = a.residual_out != nullptr ? static_cast<T*>(a.residual_out) + m * a.residual_out_stride : nullptr;
  r.w = a.weight;
  r.b = a.bias;
  int8_t* out = a.xq + static_cast<int64_t>(m) * K;  // INT8 values or E4M3 bytes
  const bool fp8 = a.out == DType::kFP8E4M3;
  const int nchunks = K / VEC;  // VEC divides K on this path (the launcher checks)
  const int stride = kWarpRow ? 32 : blockDim.x;
  Stats st;

  if constexpr (kIters > 0) {
    T buf[kIters][VEC];
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int c = tid + i * stride;
      if (c < nchunks) stage1<kOp, T, VEC>(r, K, c * VEC, false, a.residual_mode, buf[i]);
    }
    if constexpr (is_norm(kOp)) {
      float s = 0.f;
      if constexpr (kOp == RowOp::kLayerNorm) {
#pragma unroll
        for (int i = 0; i < kIters; ++i)
          if (tid + i * stride < nchunks)
#pragma unroll
            for (int j = 0; j < VEC; ++j) s += to_float(buf[i][j]);
        st.mean = row_reduce<kWarpRow>(s, Sum{}) / K;
        s = 0.f;
      }
#pragma unroll
      for (int i = 0; i < kIters; ++i)
        if (tid + i * stride < nchunks)
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const float d = to_float(buf[i][j]) - st.mean;
            s += d * d;
          }
      st.rstd = rsqrtf(row_reduce<kWarpRow>(s, Sum{}) / K + a.eps);
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int c = tid + i * stride;
      if (c < nchunks) {
        float y[VEC];
        stage2<kOp, T, VEC>(buf[i], c * VEC, r.w, r.b, st, y);
#pragma unroll
        for (int j = 0; j < VEC; ++j) amax = nan_max(amax, y[j]);
      }
    }
    amax = row_reduce<kWarpRow>(amax, AbsMax{});
    float pre;
    const float inv = finish_scale(amax, a.sx + m, pre, tid, fp8 ? 448.0f : 127.0f);
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int c = tid + i * stride;
      if (c < nchunks) {
        int8_t q[VEC];
        T y[VEC];
        float f[VEC];
        stage2<kOp, T, VEC>(buf[i], c * VEC, r.w, r.b, st, f);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          q[j] = quant(f[j], inv, pre, fp8);
          y[j] = from_float<T>(f[j]);
        }
        if constexpr (VEC == 8) {
          *reinterpret_cast<uint2*>(out + c * VEC) = *reinterpret_cast<const uint2*>(q);
        } else {
          *reinterpret_cast<uint32_t*>(out + c * VEC) = *reinterpret_cast<const uint32_t*>(q);
        }
        if (is_norm(kOp) && a.residual_mode == ResidualMode::kNormed) {
          *reinterpret_cast<uint4*>(r.res_out + c * VEC) = *reinterpret_cast<const uint4*>(y);
        }
      }
    }
  } else {
    // Streaming: pass over chunks, recomputing stage 1. After the first pass the residual sum (if
    // any) lives in res_out and is read from there.
    const bool sum_written = is_norm(kOp) && r.res != nullptr && a.residual_mode == ResidualMode::kSum;
    bool from_sum = false;
    if constexpr (is_norm(kOp)) {
      float s = 0.f;
      for (int c = tid; c < nchunks; c += stride) {
        T v[VEC];
        stage1<kOp, T, VEC>(r, K, c * VEC, false, a.residual_mode, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) s += to_float(v[j]);
      }
      s = row_reduce<kWarpRow>(s, Sum{});  // also orders the sum's writes before the next pass reads them
      from_sum = sum_written;
      if constexpr (kOp == RowOp::kLayerNorm) st.mean = s / K;
      s = 0.f;
      for (int c = tid; c < nchunks; c += stride) {
        T v[VEC];
        stage1<kOp, T, VEC>(r, K, c * VEC, from_sum, a.residual_mode, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float d = to_float(v[j]) - st.mean;
          s += d * d;
        }
      }
      st.rstd = rsqrtf(row_reduce<kWarpRow>(s, Sum{}) / K + a.eps);
    }
    float amax = 0.f;
    for (int c = tid; c < nchunks; c += stride) {
      T v[VEC];
      stage1<kOp, T, VEC>(r, K, c * VEC, from_sum, a.residual_mode, v);
      float y[VEC];
      stage2<kOp, T, VEC>(v, c * VEC, r.w, r.b, st, y);
#pragma unroll
      for (int j = 0; j < VEC; ++j) amax = nan_max(amax, y[j]);
    }
    amax = row_reduce<kWarpRow>(amax, AbsMax{});
    float pre;
    const float inv = finish_scale(amax, a.sx + m, pre, tid, fp8 ? 448.0f : 127.0f);
    for (int c = tid; c < nchunks; c += stride) {
      T v[VEC];
      stage1<kOp, T, VEC>(r, K, c * VEC, from_sum, a.residual_mode, v);
      float f[VEC];
      stage2<kOp, T, VEC>(v, c * VEC, r.w, r.b, st, f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        out[c * VEC + j] = quant(f[j], inv, pre, fp8);
        if (is_norm(kOp) && a.residual_mode == ResidualMode::kNormed) r.res_out[c * VEC + j] = from_float<T>(f[j]);
      }
    }
  }
  if constexpr (kWarpRow) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");  // per warp: no CTA barrier
#endif
  } else {
    allow_dependents_to_launch();
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, RowOp kOp>
std::string launch(const RowQuantArgs& a) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const auto rows_ok = [&](const void* p, int64_t stride) {
    return p == nullptr || (aligned16(p) && stride % kVec == 0);
  };
  const bool vec = a.K % kVec == 0 && rows_ok(a.x, a.x_stride) && rows_ok(a.residual, a.residual_stride) &&
                   rows_ok(a.residual_out, a.residual_out_stride) && aligned16(a.xq) &&
                   (a.weight == nullptr || aligned16(a.weight)) && (a.bias == nullptr || aligned16(a.bias));
  const dim3 grid(a.M);
  if (!vec) {
    row_quant_kernel<T, kOp, 1, 0, false><<<grid, kStreamThreads, 0, a.stream>>>(a);
  } else if (a.K / kVec <= 32 * 8 && g_threads_override == 0) {
    // Narrow rows (<= 2048 bf16 / fp16, 1024 fp32): a warp per row, 4 rows per 128-thread CTA.
    const int nvec = a.K / kVec;
    const dim3 wgrid((a.M + 3) / 4);
    if (nvec <= 32) {
      row_quant_kernel<T, kOp, kVec, 1, true><<<wgrid, 128, 0, a.stream>>>(a);
    } else if (nvec <= 64) {
      row_quant_kernel<T, kOp, kVec, 2, true><<<wgrid, 128, 0, a.stream>>>(a);
    } else if (nvec <= 128) {
      row_quant_kernel<T, kOp, kVec, 4, true><<<wgrid, 128, 0, a.stream>>>(a);
    } else {
      row_quant_kernel<T, kOp, kVec, 8, true><<<wgrid, 128, 0, a.stream>>>(a);
    }
  } else {
    const int nvec = a.K / kVec;
    // The smallest CTA that holds the row with <= 4 vectors per thread (or the tuning override).
    int threads = 128;
    while (threads < 1024 && nvec > threads * 4) threads *= 2;
    if (g_threads_override > 0) threads = g_threads_override;
    const int iters = (nvec + threads - 1) / threads;
    if (iters <= 1) {
      row_quant_kernel<T, kOp, kVec, 1, false><<<grid, threads, 0, a.stream>>>(a);
    } else if (iters <= 2) {
      row_quant_kernel<T, kOp, kVec, 2, false><<<grid, threads, 0, a.stream>>>(a);
    } else if (iters <= 4) {
      row_quant_kernel<T, kOp, kVec, 4, false><<<grid, threads, 0, a.stream>>>(a);
    } else {
      row_quant_kernel<T, kOp, kVec, 0, false><<<grid, threads, 0, a.stream>>>(a);
    }
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("launch failed: ") + cudaGetErrorString(err);
  return {};
}

template <typename T>
std::string dispatch_op(const RowQuantArgs& a) {
  switch (a.op) {
    case RowOp::kIdentity: return launch<T, RowOp::kIdentity>(a);
    case RowOp::kRMSNorm: return launch<T, RowOp::kRMSNorm>(a);
    case RowOp::kLayerNorm: return launch<T, RowOp::kLayerNorm>(a);
    case RowOp::kGelu: return launch<T, RowOp::kGelu>(a);
    case RowOp::kGeluTanh: return launch<T, RowOp::kGeluTanh>(a);
    case RowOp::kSiluMul: return launch<T, RowOp::kSiluMul>(a);
  }
  return "unknown row op";
}

}  // namespace

void row_quant_set_threads(int threads) { g_threads_override = threads; }

std::string row_quant(const RowQuantArgs& a) {
  if (a.M <= 0 || a.K <= 0) return {};  // nothing to do; the Python layer never launches this
  if (a.x == nullptr || a.xq == nullptr || a.sx == nullptr) return "null pointer";
  const bool norm = a.op == RowOp::kRMSNorm || a.op == RowOp::kLayerNorm;
  if (norm && a.weight == nullptr) return "normalisation without weight";
  if (a.residual_mode != ResidualMode::kNone && (!norm || a.residual_out == nullptr)) {
    return "residual output needs a normalisation op and a residual_out pointer";
  }
  if (a.residual_mode == ResidualMode::kSum && a.residual == nullptr) return "residual sum without residual";
  if (a.out != DType::kInt8 && a.out != DType::kFP8E4M3) return "output must be int8 or fp8_e4m3";
  switch (a.dtype) {
    case DType::kBF16: return dispatch_op<__nv_bfloat16>(a);
    case DType::kFP16: return dispatch_op<__half>(a);
    case DType::kFP32: return dispatch_op<float>(a);
    default: break;
  }
  return "unsupported input dtype";
}

std::string quantize_per_token(const void* x, DType x_dtype, int64_t x_row_stride, void* xq, DType out, float* sx,
                               int M, int K, cudaStream_t stream) {
  RowQuantArgs a;
  a.op = RowOp::kIdentity;
  a.out = out;
  a.dtype = x_dtype;
  a.x = x;
  a.x_stride = x_row_stride;
  a.xq = static_cast<int8_t*>(xq);
  a.sx = sx;
  a.M = M;
  a.K = K;
  a.stream = stream;
  return row_quant(a);
}

}  // namespace zq
