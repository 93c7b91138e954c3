// w4a8_stream_common.cuh: what the W4A8 streaming GEMMs share (src/cuda/w4a8_gemm.cu: FP4 x FP8;
// src/cuda/w4a8_int_gemm.cu: INT4 x INT8): the CTA shape, the launch (rows per CTA, PDL, early
// weights), the epilogue (the K-slice reduction through shared memory and the store), the argument
// checks, and the conversion kernels' grid. Included by those two translation units only: everything
// is in an anonymous namespace, as it was when they were one file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "cutlass_gemm_common.cuh"  // zq::epi::activate: the GEMM epilogue's activation, shared
#include "float_convert.cuh"        // to_float / from_float, with_float_type
#include "pdl.cuh"                  // launch_pdl, pdl_trigger, pdl_wait
#include "w4_convert.cuh"           // zq::w4: 4-bit codes -> 8-bit operands (prmt tables)
#include "zq_kernels.h"

namespace zq {
namespace {

constexpr int kWarps = 8;  // per CTA

// How a streaming kernel's grid is laid out and when its threads wait for the previous kernel.
// early: the weights and group scales of a warp's first two batches are requested before
// griddepcontrol.wait and only the activations (and the epilogue's inputs) after it, so that under
// programmatic dependent launch the first DRAM round trip overlaps the previous kernel's tail (at
// decode the weights are nearly all the bytes). The contract this needs: a streaming GEMM's weights
// and scales are not written by any kernel that may still run when it starts, i.e. by the chain of
// PDL-launched kernels before it (pdl.cuh: the row ops trigger at entry, so a chain runs back to
// the last kernel that did not trigger early, e.g. any torch kernel or copy). No kernel of this
// library that triggers early writes packed codes or group scales. Off (a probe's switch,
// _C._debug_set_w4a8_early_weights): every thread waits first.
struct StreamLaunch {
  int R;       // 16-row tiles per CTA (the CTA's warps split K into 8 / R slices)
  bool early;  // weights before the wait
};


using namespace w4;

__device__ __forceinline__ uint4 load_stream(const uint4* p) {  // read once: keep it out of L1
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// y = act(sx[m] * (sw[n] * acc) + bias[n]) for the 16 rows x 8 kNT tokens of row tile rt (the MMA's
// accumulator layout: lane 4 r + t holds rows r, r + 8 and tokens 2 t, 2 t + 1 of each 8).
template <int kNT, typename OutT, class Args>
__device__ __forceinline__ void store_tile(const Args& a, const float (&acc)[kNT][4], int lane, int rt, int tok0) {
  const int r = lane >> 2, t = lane & 3;
  const int act = static_cast<int>(a.activation);
  const OutT* bias = static_cast<const OutT*>(a.bias);
  OutT* out = static_cast<OutT*>(a.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {  // rows r (acc 0, 1) and r + 8 (acc 2, 3)
    const int n = rt * 16 + r + 8 * h;
    const float sw = a.sb[n];
    const float b = bias != nullptr ? to_float(bias[n]) : 0.f;
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int m = tok0 + j * 8 + 2 * t + i;
        if (m >= a.M) continue;
        float v = fmaf(a.sa[m], sw * acc[j][2 * h + i], b);
        if (act != 0) v = epi::activate(v, act);
        out[static_cast<int64_t>(m) * a.N + n] = from_float<OutT>(v);
      }
  }
}

// The K-slice reduction through shared memory (red: [warps][kNT * 4][32] floats): every slice but the
// first writes its sums, the first (warp w0) adds those of warps w0 + 1 .. w0 + W - 1.
template <int kNT>
__device__ __forceinline__ void slice_write(float (*red)[kNT * 4][32], const float (&acc)[kNT][4], int warp, int lane) {
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][j * 4 + i][lane] = acc[j][i];
}
template <int kNT>
__device__ __forceinline__ void slice_add(float (*red)[kNT * 4][32], float (&acc)[kNT][4], int w0, int W, int lane) {
  for (int o = 1; o < W; ++o) {
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][i] += red[w0 + o][j * 4 + i][lane];
  }
}

// The end of every streaming kernel: reduce the W K-slices of each row tile through shared memory
// (slices 1..W-1 write, slice 0 adds), then slice 0 applies the epilogue,
// y = act(sx[m] * (sw[n] * acc) + bias[n]), and stores its 16 rows x 8 kNT tokens.
template <int kNT, typename OutT, class Args>
__device__ __forceinline__ void finish_tile(const Args& a, float (&acc)[kNT][4], int warp, int lane, int kp, int W,
                                            bool active, int rt, int tok0) {
  __shared__ float red[kWarps][kNT * 4][32];
  if (kp != 0) slice_write<kNT>(red, acc, warp, lane);
  __syncthreads();
  pdl_trigger();  // the next kernel launches now and waits for this grid (pdl.cuh)
  if (kp != 0 || !active) return;
  slice_add<kNT>(red, acc, warp, W, lane);
  store_tile<kNT, OutT>(a, acc, lane, rt, tok0);
}

// The checks every streaming GEMM runs before a launch. group_multiple: the group size must be a
// multiple of it (16: a lane's 16 k in one group; 32: an MMA step in one group); sg_bytes: the
// element size of the group scales.
template <class Args>
std::string check_stream_args(const Args& a, int group_multiple, uintptr_t sg_bytes) {
  if (a.M <= 0 || a.N <= 0 || a.K <= 0) return "M, N, K must be > 0";
  if (a.N % 16 != 0) return "N must be a multiple of 16, got " + std::to_string(a.N);
  if (a.K % 64 != 0) return "K must be a multiple of 64, got " + std::to_string(a.K);
  if (a.group_size <= 0 || a.group_size % group_multiple != 0 || a.K % a.group_size != 0) {
    return "group_size must be a multiple of " + std::to_string(group_multiple) + " dividing K, got " +
           std::to_string(a.group_size);
  }
  if (a.lda < a.K || a.lda % 16 != 0) return "lda must be >= K and a multiple of 16";
  const auto aligned = [](const void* p, uintptr_t n) { return p != nullptr && reinterpret_cast<uintptr_t>(p) % n == 0; };
  if (!aligned(a.a, 16) || !aligned(a.b, 16)) return "xq and wq must be 16-byte aligned";
  if (!aligned(a.sg, sg_bytes) || !aligned(a.sa, 4) || !aligned(a.sb, 4) || a.out == nullptr) {
    return "null or misaligned scale / output pointer";
  }
  const int act = static_cast<int>(a.activation);
  if (act < 0 || act > 3) return "activation code must be 0..3";
  return {};
}

// Launch a streaming kernel over the row tiles, R 16-row tiles per CTA (the CTA's warps split K
// into W = 8 / R slices and reduce them in shared memory). R: the largest that still gives every CTA
// slot (occupancy x SMs) a CTA in the first wave, else 1. A larger R makes each warp stream more
// chunks with fewer prologues, drains and reductions, which pays more than a partial last wave costs
// while the slots are full (H100, scripts/profile_w4a8_stream.py --rows-per-cta,
// benchmarks/results/w4a8_stream_rows_h100-80gb-hbm3_5423d26.txt: INT4 28672 x 4096 M = 1 takes
// 33.0 / 30.8 / 29.7 / 29.5 us at R = 1 / 2 / 4 / 8, but 4096 x 14336 16.3 / 24.6 / 43.4 / 84.6, where
// R = 2 leaves SMs idle). occupancy: the kernel's CTAs per SM (the caller caches it).
template <class Args>
void launch_row_tiles(void (*kernel)(Args, StreamLaunch), const Args& a, int tokens_per_cta, int occupancy) {
  const int ntiles = a.N / 16;
  const int ytiles = (a.M + tokens_per_cta - 1) / tokens_per_cta;
  const double slots = static_cast<double>(occupancy) * (a.sm_count > 0 ? a.sm_count : 132);
  int R = 1;
  for (int cand = 2; cand <= kWarps; cand *= 2) {
    if (static_cast<double>((ntiles + cand - 1) / cand) * ytiles >= slots) R = cand;
  }
  if (gemm_tuning().w4a8_rows_per_cta > 0) R = gemm_tuning().w4a8_rows_per_cta;  // a probe's choice
  const StreamLaunch L{R, pdl_enabled() && gemm_tuning().w4a8_early_weights};
  launch_pdl(kernel, dim3((ntiles + R - 1) / R, ytiles), dim3(kWarps * 32), 0, a.stream, a, L);
}

template <class Args>
int occupancy_of(void (*kernel)(Args, StreamLaunch)) {
  int occupancy = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, kWarps * 32, 0);
  return occupancy < 1 ? 1 : occupancy;
}

// The conversion kernels (fp4_to_fp8, int4_to_int8): one thread per 16-byte lane chunk of the packed
// layout, N / 16 row tiles x K / 64 chunks x 32 lanes.
constexpr int kConvertBlock = 256;
unsigned convert_blocks(int N, int K) {
  const int64_t threads = static_cast<int64_t>(N / 16) * (K / 64) * 32;
  return static_cast<unsigned>((threads + kConvertBlock - 1) / kConvertBlock);
}

// A conversion thread's lane chunk: index i of the 16-byte chunks (row tile rt, chunk c of K / 64, lane
// 4 r + t), the tile's row n_lo = 16 rt + r (its codes cover rows n_lo and n_lo + 8), c and t. False
// for the threads past the last chunk.
struct ConvertChunk {
  int64_t i, n_lo;
  int c, t;
};
__device__ __forceinline__ bool convert_chunk(int N, int K, ConvertChunk& ch) {
  ch.i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int nchunks = K >> 6;
  if (ch.i >= static_cast<int64_t>(N >> 4) * nchunks * 32) return false;
  const int lane = static_cast<int>(ch.i & 31);
  const int64_t tc = ch.i >> 5;
  ch.c = static_cast<int>(tc % nchunks);
  ch.t = lane & 3;
  ch.n_lo = (tc / nchunks) * 16 + (lane >> 2);
  return true;
}

// "" when the last launch on this thread was accepted, else why not.
std::string launch_status() {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return std::string("launch failed: ") + cudaGetErrorString(e);
  return {};
}

// The host dispatch of a streaming GEMM: launch(OutT{}, std::integral_constant<int, kNT>{},
// std::bool_constant<flag>{}) for a's output type, the token tile that covers a.M (kNT MMAs of 8
// tokens per warp: a CTA takes 8, 16, 32 or 64 tokens, more CTAs along the tokens beyond 64) and the
// kernel's one run-time choice (FP4: power-of-two scales; INT4: integer scales); then the launch's status.
template <class Args, class F>
std::string dispatch_stream(const Args& a, bool flag, F&& launch) {
  return with_float_type(
      a.out_dtype,
      [&](auto t) {
        const auto by_flag = [&](auto nt) {
          if (flag) {
            launch(t, nt, std::true_type{});
          } else {
            launch(t, nt, std::false_type{});
          }
        };
        if (a.M <= 8) {
          by_flag(std::integral_constant<int, 1>{});
        } else if (a.M <= 16) {
          by_flag(std::integral_constant<int, 2>{});
        } else if (a.M <= 32) {
          by_flag(std::integral_constant<int, 4>{});
        } else {
          by_flag(std::integral_constant<int, 8>{});
        }
        return launch_status();
      },
      "out_dtype must be bf16, fp16 or fp32");
}

}  // namespace
}  // namespace zq
