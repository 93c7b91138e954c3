// quantize.cu: token-wise symmetric INT8 quantization (ZeroQuant's dynamic activations).
//
// Computes, per row m of x [M, K] (bf16 / fp16 / fp32, unit column stride, any row stride):
//   amax = max_k |x[m, k]|            (NaN-propagating: a NaN anywhere makes amax NaN)
//   sx[m] = amax / 127                (fp32, IEEE division)
//   inv   = 127 / amax                (fp32, IEEE division; the reference divides the same way)
//   xq[m, k] = clamp(rint(x[m, k] * inv), -127, 127)   (round half to even)
//   amax == 0 -> sx = 0, xq = 0 (never NaN).
//   amax < 2^-64 (tiny rows): x and amax are first multiplied by 2^64, which is exact, so that
//   127 / amax cannot overflow to inf (it did for amax < ~3.7e-37, giving all-127 rows); the row
//   then quantizes exactly like the same row scaled up, and sx = amax / 127 keeps the true scale.
// python/zqkernels/reference/quantize.py is the same math in torch; tests demand bit-exact
// agreement.
//
// Memory-bound: x is read once and xq written once. One CTA per row; when the row fits
// (<= 1024 threads * 4 vectors of 16 bytes = 64 KiB) it stays in registers between the amax
// reduction and the quantization, so DRAM sees exactly one read. The CTA grows with the row
// (128..1024 threads) while each thread holds at most 4 vectors: holding more per thread costs
// registers, hence resident CTAs, hence loads in flight (16 per thread ran at 50% of copy
// bandwidth for K = 11008 on an H100, against 84% for 4 per thread at K = 4096). Wider or
// unaligned rows take a two-pass path whose second read mostly hits L2.
//
// Limits: any M, K >= 1. The 16-byte path needs 16-byte aligned rows (base and row stride).
// Test: tests/test_quantize_gpu.py; time: benchmarks/bench_w8a8.py (quantize table).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "zq_kernels.h"

namespace zq {
namespace {

constexpr int kGenericThreads = 128;  // the two-pass path's CTA
int g_threads_override = 0;           // 0 = automatic; 128/256/512/1024 for tuning experiments

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// max(|.|) that propagates NaN (fmaxf would drop it and hide bad input behind a finite scale).
__device__ __forceinline__ float nan_max(float m, float v) {
  v = fabsf(v);
  return (v > m || v != v) ? v : m;
}

template <int kThreads>
__device__ __forceinline__ float block_amax(float v) {
  __shared__ float warp_max[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  v = warp_max[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) v = nan_max(v, warp_max[w]);
  return v;
}

// Lets a kernel launched after this one with programmatic dependent launch (the int8 GEMM) start
// its prologue while this grid's last CTAs finish. Only a scheduling hint: the GEMM's
// griddepcontrol.wait returns once this whole grid has completed and its writes are visible, so
// correctness never depends on where the trigger sits (docs/PERF_NOTES.md: the stale-rows bug once
// blamed on an early trigger was the GEMM not waiting at all). Placed after each CTA's stores so
// the dependent's CTAs do not take SMs from this grid too early.
// tests/test_gemm_gpu.py::test_pdl_gemm_waits_for_a_late_producer guards the wait.
__device__ __forceinline__ void allow_dependents_to_launch() {
  __syncthreads();  // the whole CTA's stores precede its trigger
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

constexpr float kTiny = 0x1p-64f;  // rows with amax below this are pre-scaled by 2^64 (exact)
constexpr float kTinyScale = 0x1p64f;

__device__ __forceinline__ int8_t quant(float v, float inv, float pre) {
  int q = __float2int_rn((v * pre) * inv);  // round half to even, like torch.round
  q = max(-127, min(127, q));
  return static_cast<int8_t>(q);
}

// Scale from amax; writes sx and returns the multiplier `inv` and the pre-scale `pre` (1, or 2^64
// for tiny rows): q = rint((x * pre) * inv).
__device__ __forceinline__ float finish_scale(float amax, float* sx_row, float& pre) {
  if (threadIdx.x == 0) *sx_row = amax / 127.0f;
  pre = amax < kTiny ? kTinyScale : 1.0f;
  return amax == 0.f ? 0.f : 127.0f / (amax * pre);
}

// Register-resident path: kThreads x kIters 16-byte vectors cover the whole row.
template <typename T, int kThreads, int kIters>
__global__ void __launch_bounds__(kThreads)
quant_rows_vec(const T* __restrict__ x, int64_t row_stride, int8_t* __restrict__ xq,
               float* __restrict__ sx, int K) {
  constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte load
  const int m = blockIdx.x;
  const T* row = x + m * row_stride;
  const int nvec = K / kVec;

  uint4 buf[kIters];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const int v = threadIdx.x + i * kThreads;
    if (v < nvec) {
      buf[i] = __ldg(reinterpret_cast<const uint4*>(row) + v);
      const T* e = reinterpret_cast<const T*>(&buf[i]);
#pragma unroll
      for (int j = 0; j < kVec; ++j) amax = nan_max(amax, to_float(e[j]));
    }
  }
  amax = block_amax<kThreads>(amax);
  float pre;
  const float inv = finish_scale(amax, sx + m, pre);

  int8_t* out = xq + static_cast<int64_t>(m) * K;
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const int v = threadIdx.x + i * kThreads;
    if (v < nvec) {
      const T* e = reinterpret_cast<const T*>(&buf[i]);
      int8_t q[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) q[j] = quant(to_float(e[j]), inv, pre);
      // kVec int8 = 4 (fp32) or 8 (16-bit) bytes: one aligned store.
      if constexpr (kVec == 8) {
        *reinterpret_cast<uint2*>(out + v * kVec) = *reinterpret_cast<const uint2*>(q);
      } else {
        *reinterpret_cast<uint32_t*>(out + v * kVec) = *reinterpret_cast<const uint32_t*>(q);
      }
    }
  }
  allow_dependents_to_launch();
}

// General path: any K, any alignment. Two passes over the row (the second mostly from L2).
template <typename T>
__global__ void __launch_bounds__(kGenericThreads)
quant_rows_generic(const T* __restrict__ x, int64_t row_stride, int8_t* __restrict__ xq,
                   float* __restrict__ sx, int K) {
  const int m = blockIdx.x;
  const T* row = x + m * row_stride;
  float amax = 0.f;
  for (int k = threadIdx.x; k < K; k += kGenericThreads) amax = nan_max(amax, to_float(row[k]));
  amax = block_amax<kGenericThreads>(amax);
  float pre;
  const float inv = finish_scale(amax, sx + m, pre);
  int8_t* out = xq + static_cast<int64_t>(m) * K;
  for (int k = threadIdx.x; k < K; k += kGenericThreads) out[k] = quant(to_float(row[k]), inv, pre);
  allow_dependents_to_launch();
}

template <typename T>
std::string launch(const T* x, int64_t row_stride, int8_t* xq, float* sx, int M, int K,
                   cudaStream_t stream) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && (row_stride % kVec == 0) &&
                       (K % kVec == 0);
  const int nvec = K / kVec;
  const dim3 grid(M);
  // Threads per row: the smallest CTA that holds the row with <= 4 vectors per thread, unless a
  // tuning override asks for another size (quantize_per_token_set_threads, for experiments).
  int threads = 128;
  while (threads < 1024 && nvec > threads * 4) threads *= 2;
  if (g_threads_override > 0) threads = g_threads_override;
  const int iters = (nvec + threads - 1) / threads;
#define ZQ_QUANT_VEC(THREADS, ITERS) \
  quant_rows_vec<T, THREADS, ITERS><<<grid, THREADS, 0, stream>>>(x, row_stride, xq, sx, K)
// Instantiated only while threads x iters <= 4096 vectors (a 64 KiB row): beyond that the
// per-thread buffer no longer fits the register budget of a large CTA and would spill.
#define ZQ_QUANT_ITERS(THREADS)                                          \
  if (iters <= 1) ZQ_QUANT_VEC(THREADS, 1);                              \
  else if (iters <= 2) ZQ_QUANT_VEC(THREADS, 2);                         \
  else if (iters <= 4) ZQ_QUANT_VEC(THREADS, 4);                         \
  else if constexpr (THREADS <= 512) {                                   \
    if (iters <= 8) ZQ_QUANT_VEC(THREADS, (THREADS <= 512 ? 8 : 1));     \
    else if constexpr (THREADS <= 256) ZQ_QUANT_VEC(THREADS, (THREADS <= 256 ? 16 : 1)); \
  }
  if (!aligned || iters > 16 || threads * iters > 4096) {
    quant_rows_generic<T><<<grid, kGenericThreads, 0, stream>>>(x, row_stride, xq, sx, K);
  } else if (threads == 128) {
    ZQ_QUANT_ITERS(128)
  } else if (threads == 256) {
    ZQ_QUANT_ITERS(256)
  } else if (threads == 512) {
    ZQ_QUANT_ITERS(512)
  } else {
    ZQ_QUANT_ITERS(1024)
  }
#undef ZQ_QUANT_ITERS
#undef ZQ_QUANT_VEC
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("quantize_per_token: launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace

void quantize_per_token_set_threads(int threads) { g_threads_override = threads; }

std::string quantize_per_token_int8(const void* x, DType x_dtype, int64_t x_row_stride, int8_t* xq,
                                    float* sx, int M, int K, cudaStream_t stream) {
  if (M <= 0 || K <= 0) return {};  // nothing to do; the Python layer never launches this
  if (M > 2147483647) return "quantize_per_token: M too large";
  switch (x_dtype) {
    case DType::kBF16:
      return launch(static_cast<const __nv_bfloat16*>(x), x_row_stride, xq, sx, M, K, stream);
    case DType::kFP16:
      return launch(static_cast<const __half*>(x), x_row_stride, xq, sx, M, K, stream);
    case DType::kFP32:
      return launch(static_cast<const float*>(x), x_row_stride, xq, sx, M, K, stream);
  }
  return "quantize_per_token: unsupported input dtype";
}

}  // namespace zq
