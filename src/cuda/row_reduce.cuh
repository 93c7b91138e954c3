// row_reduce.cuh: reductions over a row's threads and a cluster's CTAs, and the per-token quantized
// byte and its scale: the pieces the row-op kernels (row_quant.cu, row_quant_stages.cuh) and the
// quantizing decode-attention combine (decode_attention.cu) share, so both quantize a row the same
// way bit for bit (docs/SCALES.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cooperative_groups.h>

#include <cstdint>

namespace zq {
namespace {

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
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if constexpr (!kWarpRow) {
    __shared__ float part[32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < warps; ++w) v = op(v, part[w]);
    __syncthreads();
  }
  return v;
}

// The cluster's share of a row reduction (kCluster > 1 CTAs split one row, row_quant.cu): v, already
// reduced over this CTA, goes to this CTA's slot; after a cluster barrier every thread combines the
// kCluster values in rank order, so every CTA gets the same bits. Each reduction of a kernel uses its
// own slot (0 mean, 1 variance / sum of squares, 2 amax): no slot is rewritten. After its last read
// of other CTAs' slots a thread calls cluster_done_reading(), and at its end cluster_end(): no CTA
// exits while another may still read its slots, and nobody waits for the others' stores.
template <int kCluster, class Op>
__device__ __forceinline__ float cluster_combine(float v, Op op, int slot) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  __shared__ float slots[3];
  if (threadIdx.x == 0) slots[slot] = v;
  cg::cluster_group cl = cg::this_cluster();
  cl.sync();
  v = *cl.map_shared_rank(&slots[slot], 0);
#pragma unroll
  for (int r = 1; r < kCluster; ++r) v = op(v, *cl.map_shared_rank(&slots[slot], r));
#else
  __trap();  // clusters need sm_90: the host launches this path only there
#endif
  return v;
}

template <int kCluster>
__device__ __forceinline__ void cluster_done_reading() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kCluster > 1) asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}

template <int kCluster>
__device__ __forceinline__ void cluster_end() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kCluster > 1) asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// row_reduce, then (kCluster > 1) over the cluster's CTAs through `slot` (cluster_combine).
template <bool kWarpRow, int kCluster, class Op>
__device__ __forceinline__ float reduce_row(float v, Op op, int slot) {
  v = row_reduce<kWarpRow>(v, op);
  if constexpr (kCluster > 1) v = cluster_combine<kCluster>(v, op, slot);
  return v;
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

}  // namespace
}  // namespace zq
