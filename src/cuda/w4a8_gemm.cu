// w4a8_gemm.cu: the W4A8-FP streaming and conversion kernels (W4A8 with integer group scales, INT4 x
// INT8: w4a8_int_gemm.cu; what both streaming GEMMs share: w4a8_stream_common.cuh).
// W4A8-FP (ZeroQuant-FP): FP4 E2M1 weights with group scales x FP8 E4M3
// per-token activations on FP8 tensor cores, for any GPU with FP8 mma.sync (sm_89+; built for
// sm_90a here). docs/FP8.md defines the formats and the packed layout `m16k64`.
//
//   y[m, n] = act(sx[m] * (sw[n] * acc[m, n]) + bias[n]),
//   acc[m, n] = sum_k xq[m, k] * wf[n, k],   wf = the FP8 value of the weight:
//     pow2 scales (policies m1 / m2): wf = e2m1(code) * 2^e[n, k / g]   (exact; e in [-5, 0])
//     float scales (policy free):     wf = e4m3(float(e2m1(code)) * r[n, k / g])   (fp32 product,
//                                      rounded to nearest even, saturating)
//
// Two kernels:
//  * w4a8_fp_stream: the GEMM for small and moderate M. A warp owns 16 weight rows (the A operand
//    of mma.m16n8k32, swap-AB: the tokens are the MMA's narrow n = 8 side) and a strided share of
//    the 64-wide K chunks; one 16-byte load per lane per chunk brings its FP4 codes of two MMA
//    steps (the layout is made for it), and one 16-byte load per 8 tokens its activation bytes
//    (the kernel feeds both operands the same permutation of k inside a chunk). The weights are
//    converted in registers:
//      pow2:  per group, the 8-byte table of the E4M3 magnitudes e2m1(c) * 2^e is built by adding
//             e << 3 to the exponent fields of a constant table (two integer adds) and its
//             negative by an OR of the sign bits; 4 codes become 4 E4M3 bytes with 3 byte permutes
//             (prmt: magnitude from the positive and from the negative table, then a per-byte
//             choice by the sign bit) and 3 logic ops. No float instruction touches a weight.
//      float: the same permutes with e = 0 give e2m1(c) exactly; then per pair of weights
//             e4m3x2 -> f16x2 -> 2 x f32, two fp32 multiplies by r, f32x2 -> e4m3x2 (the baseline
//             ZeroQuant-FP's power-of-two constraint removes).
//    Accumulation: each batch's MMAs (kBatch chunks, 256 of K by default) start from zero and their
//    sum is added to fp32 totals (FP8 MMA accumulators are not full fp32 on Hopper). The warps that
//    share a row tile reduce through shared memory; one writes the outputs.
//    A CTA is 8 warps: R row tiles x (8 / R) K-slices, R chosen so that the grid fills the GPU.
//  * fp4_to_fp8: the same conversion into a row-major E4M3 matrix [N, K] (large M runs it once and
//    then the FP8 GEMM; the tests use it to check the conversion bit for bit).
//
// Limits (checked here and by python/zqkernels/ops/gemm_checks.py): N % 16 == 0, K % 64 == 0, group
// size g % 16 == 0 dividing K (a lane's 16 consecutive k lie in one group), xq rows 16-byte
// aligned, out any alignment (scalar stores).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "w4a8_stream_common.cuh"  // kWarps, StreamLaunch, finish_tile, launch_row_tiles, checks
#include "zq_kernels.h"

namespace zq {
namespace {

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One chunk of 64 of K for one warp: convert the lane's 32 codes (rows r, r + 8) with the group
// scales' converters and run the 2 x kNT MMAs into part.
template <int kNT, bool kPow2>
__device__ __forceinline__ void mma_chunk(const uint4& wv, uint32_t slo, uint32_t shi, const uint4 (&xv)[kNT],
                                          float (&part)[kNT][4]) {
  RowScale<kPow2> s_lo, s_hi;
  s_lo.set(slo);
  s_hi.set(shi);
  const uint32_t w[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    const Sel q0 = selectors(w[2 * s]), q1 = selectors(w[2 * s + 1]);
    const uint32_t af[4] = {s_lo(q0.idx, q0.sel), s_hi(q0.idx >> 16, q0.sel >> 16), s_lo(q1.idx, q1.sel),
                            s_hi(q1.idx >> 16, q1.sel >> 16)};
#pragma unroll
    for (int j = 0; j < kNT; ++j) mma_e4m3(part[j], af, s == 0 ? xv[j].x : xv[j].z, s == 0 ? xv[j].y : xv[j].w);
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(addr), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory"); }

// kNT: MMAs of 8 tokens per warp (a CTA covers 8 * kNT tokens). kBatch: K chunks of a warp loaded
// together; kPipe: the next batch is loaded while this one is processed (software pipeline) instead
// of after it. (kBatch, kPipe) per kNT: Variant below, from scripts/probe_w4a8_stream.py.
// kRing > 0: instead, each warp keeps kRing chunks in flight in a shared-memory ring filled by
// cp.async (no registers held by loads in flight; the group scales ride a register ring).
template <int kNT, bool kPow2, typename OutT, int kBatch, bool kPipe, int kRing = 0>
__global__ void __launch_bounds__(kWarps * 32) w4a8_fp_stream(W4A8FPArgs a, StreamLaunch L) {
  const int R = L.R;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane >> 2, t = lane & 3;
  const int W = kWarps / R;
  const int rt = blockIdx.x * R + warp / W;  // row tile (16 weight rows)
  const int kp = warp % W;
  const int nchunks = a.K >> 6;
  const int tok0 = blockIdx.y * 8 * kNT;
  const bool active = rt < (a.N >> 4);
  // A thread that skips the wait (early, inactive or without a chunk) reads no activation and
  // writes nothing to global memory: only slice 0 of an active tile stores, after its wait.
  if (!L.early) pdl_wait();

  float acc[kNT][4];
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

  if (active) {
    const uint4* wp = reinterpret_cast<const uint4*>(a.b) + static_cast<int64_t>(rt) * nchunks * 32 + lane;
    const int64_t n_lo = static_cast<int64_t>(rt) * 16 + r;
    const uint8_t* xrow[kNT];
    bool tok_ok[kNT];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      const int m = tok0 + j * 8 + r;  // the MMA's B column (token) of this lane
      tok_ok[j] = m < a.M;
      xrow[j] = static_cast<const uint8_t*>(a.a) + static_cast<int64_t>(tok_ok[j] ? m : 0) * a.lda + 16 * t;
    }
    // The group scales, group-major sg_t [G, N] of 32 bits (int32 exponents or float ratios, the
    // host's cached transpose shared with the mixed-input mainloop): rows r and r + 8 of the group
    // of this lane's 16 k of chunk c, floor((4 c + t) / d) with d = group_size / 16, computed as
    // umulhi(2 (4 c + t), ceil(2^31 / d)) (exact while K < 2^19, checked on the host): no division.
    const uint32_t d = static_cast<uint32_t>(a.group_size >> 4);
    const uint32_t gmul = (0x80000000u + d - 1) / d;
    const uint32_t* sg_rows = static_cast<const uint32_t*>(a.sg) + n_lo;
    const auto scales_of = [&](int c, uint32_t& lo, uint32_t& hi) {
      const uint32_t* p = sg_rows + static_cast<int64_t>(__umulhi(static_cast<uint32_t>(8 * c + 2 * t), gmul)) * a.N;
      lo = __ldg(p);
      hi = __ldg(p + 8);
    };
    if constexpr (kRing > 0) {
      __shared__ uint4 ring[kWarps][kRing > 0 ? kRing : 1][32];
      uint32_t rlo[kRing > 0 ? kRing : 1], rhi[kRing > 0 ? kRing : 1];
      const auto issue = [&](int c, int slot) {  // chunk c into the ring (nothing past the end)
        if (c < nchunks) {
          cp_async16(&ring[warp][slot][lane], wp + static_cast<int64_t>(c) * 32);
          scales_of(c, rlo[slot], rhi[slot]);
        }
        cp_async_commit();  // one group per slot, empty past the end: uniform counting
      };
#pragma unroll
      for (int u = 0; u < kRing; ++u) issue(kp + u * W, u);
      if (L.early) pdl_wait();
      for (int c0 = kp; c0 < nchunks; c0 += kRing * W) {
        float part[kNT][4];
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) part[j][i] = 0.f;
#pragma unroll
        for (int u = 0; u < kRing; ++u) {
          const int c = c0 + u * W;
          if (c >= nchunks) break;
          cp_async_wait<kRing - 1>();  // this lane's copy of chunk c has landed (it reads only its own)
          const uint4 wv = ring[warp][u][lane];
          uint4 xv[kNT];
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            xv[j] = tok_ok[j] ? __ldg(reinterpret_cast<const uint4*>(xrow[j] + static_cast<int64_t>(c) * 64))
                              : make_uint4(0, 0, 0, 0);
          }
          const uint32_t lo = rlo[u], hi = rhi[u];
          mma_chunk<kNT, kPow2>(wv, lo, hi, xv, part);
          issue(c + kRing * W, u);  // after the slot's value is in registers (and used): no WAR race
        }
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[j][i] += part[j][i];
      }
      cp_async_wait<0>();
    } else {
    // The weights are read once, from DRAM: latency is what limits a warp. kPipe: the next batch of
    // kBatch chunks is in flight while this one is converted and multiplied. For few tokens the
    // batch's activation loads (L1 / L2 hits) are issued up front too.
    constexpr bool kHoistX = kNT <= 2;
    const int step = W * kBatch;
    // The group scales of rows r and r + 8 travel with their chunk (16 consecutive k of a lane lie
    // in one group).
    uint4 wv[kBatch];
    uint32_t slo[kBatch], shi[kBatch];
    const auto fetch = [&](int c, uint4& w, uint32_t& lo, uint32_t& hi) {
      w = load_stream(wp + static_cast<int64_t>(c) * 32);
      scales_of(c, lo, hi);
    };
    if constexpr (kPipe) {
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int c = kp + u * W;
        if (c < nchunks) fetch(c, wv[u], slo[u], shi[u]);
      }
    }
    for (int c0 = kp; c0 < nchunks; c0 += step) {
      constexpr int kNext = kPipe ? kBatch : 1;
      uint4 nw[kNext];
      uint32_t nlo[kNext], nhi[kNext];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if constexpr (kPipe) {
          const int c = c0 + step + u * W;
          if (c < nchunks) fetch(c, nw[u], nlo[u], nhi[u]);
        } else {
          const int c = c0 + u * W;
          if (c < nchunks) fetch(c, wv[u], slo[u], shi[u]);
        }
      }
      if (L.early && c0 == kp) pdl_wait();  // two batches of weights requested
      uint4 xh[kHoistX ? kBatch : 1][kNT];
      if constexpr (kHoistX) {
#pragma unroll
        for (int u = 0; u < kBatch; ++u)
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            const int c = c0 + u * W;
            xh[u][j] = tok_ok[j] && c < nchunks
                           ? __ldg(reinterpret_cast<const uint4*>(xrow[j] + static_cast<int64_t>(c) * 64))
                           : make_uint4(0, 0, 0, 0);
          }
      }
      // This batch's MMAs accumulate from zero; their sum is promoted into the fp32 totals after
      // the batch (every kBatch * 64 of K: FP8 MMA accumulators are not full fp32 on Hopper).
      float part[kNT][4];
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[j][i] = 0.f;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int c = c0 + u * W;
        if (c >= nchunks) break;
        uint4 xv[kNT];
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          if constexpr (kHoistX) {
            xv[j] = xh[u][j];
          } else {
            xv[j] = tok_ok[j] ? __ldg(reinterpret_cast<const uint4*>(xrow[j] + static_cast<int64_t>(c) * 64))
                              : make_uint4(0, 0, 0, 0);
          }
        }
        RowScale<kPow2> s_lo, s_hi;
        s_lo.set(slo[u]);
        s_hi.set(shi[u]);
        const uint32_t w[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const Sel q0 = selectors(w[2 * s]), q1 = selectors(w[2 * s + 1]);
          const uint32_t af[4] = {s_lo(q0.idx, q0.sel), s_hi(q0.idx >> 16, q0.sel >> 16), s_lo(q1.idx, q1.sel),
                                  s_hi(q1.idx >> 16, q1.sel >> 16)};
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            const uint32_t b0 = s == 0 ? xv[j].x : xv[j].z;
            const uint32_t b1 = s == 0 ? xv[j].y : xv[j].w;
            mma_e4m3(part[j], af, b0, b1);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] += part[j][i];
      if constexpr (kPipe) {
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          wv[u] = nw[u];
          slo[u] = nlo[u];
          shi[u] = nhi[u];
        }
      }
    }
    }
  }

  finish_tile<kNT, OutT>(a, acc, warp, lane, kp, W, active, rt, tok0);
}

template <bool kPow2>
__global__ void fp4_to_fp8_kernel(const uint8_t* packed, const void* sg, int group_size, int N, int K, uint8_t* out) {
  ConvertChunk ch;
  if (!convert_chunk(N, K, ch)) return;
  const int64_t n_lo = ch.n_lo;
  const int c = ch.c, t = ch.t;
  const int G = K / group_size;
  const int grp = (c * 64 + 16 * t) / group_size;
  RowScale<kPow2> s_lo, s_hi;
  s_lo.load(sg, n_lo * G + grp);
  s_hi.load(sg, (n_lo + 8) * G + grp);
  const uint4 v = reinterpret_cast<const uint4*>(packed)[ch.i];
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  uint32_t lo[4], hi[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {  // word q: k 16t + 4q .. + 3 of rows r (low half) and r + 8
    const Sel x = selectors(w[q]);
    lo[q] = s_lo(x.idx, x.sel);
    hi[q] = s_hi(x.idx >> 16, x.sel >> 16);
  }
  const int64_t k0 = static_cast<int64_t>(c) * 64 + 16 * t;
  *reinterpret_cast<uint4*>(out + n_lo * K + k0) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  *reinterpret_cast<uint4*>(out + (n_lo + 8) * K + k0) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
}

template <int kNT, bool kPow2, typename OutT, int kBatch, bool kPipe, int kRing = 0>
void launch_stream(const W4A8FPArgs& a) {
  constexpr auto kernel = w4a8_fp_stream<kNT, kPow2, OutT, kBatch, kPipe, kRing>;
  static const int occupancy = occupancy_of(kernel);  // per instantiation; the same on every H100
  launch_row_tiles(kernel, a, 8 * kNT, occupancy);
}

// The loading schedule: the defaults below; ZQ_EXPERIMENT_TILES builds also
// (4, false), (8, false), (2, true) and, for M <= 16, the shared-memory ring of 8 or 4 chunks per
// warp, chosen at run time by GemmTuning::w4a8_variant (1..5) for scripts/probe_w4a8_stream.py.
template <int kNT, bool kPow2, typename OutT>
void launch_variant(const W4A8FPArgs& a) {
  if constexpr (kNT == 1) {  // variant 6 (any build): M <= 8 on register batches of 4, no shared-memory ring
    if (gemm_tuning().w4a8_variant == 6) return launch_stream<1, kPow2, OutT, 4, true>(a);
  }
#if defined(ZQ_EXPERIMENT_TILES)
  switch (gemm_tuning().w4a8_variant) {
    case 1: return launch_stream<kNT, kPow2, OutT, 4, false>(a);
    case 2: return launch_stream<kNT, kPow2, OutT, 8, false>(a);
    case 3: return launch_stream<kNT, kPow2, OutT, 2, true>(a);
    case 4: if constexpr (kNT <= 2) return launch_stream<kNT, kPow2, OutT, 4, true, 8>(a); break;
    case 5: if constexpr (kNT <= 2) return launch_stream<kNT, kPow2, OutT, 4, true, 4>(a); break;
    default: break;
  }
#endif
  // The defaults, from scripts/probe_w4a8_stream.py on an H100
  // (benchmarks/results/w4a8_stream_schedules_ring_*): M <= 8, the 4-chunk shared-memory ring
  // (1.78 against 1.67 TB/s at M = 1 on 24576 x 14336, 1.45 against 1.27 on 22016 x 4096); M <= 16,
  // register batches of 4 pipelined for power-of-two scales (1.44 TB/s against 1.25 for the ring)
  // and of 2 for float scales (whose conversion needs more registers: 1.13 against 0.93 TB/s).
  if constexpr (kNT == 1) {
    launch_stream<kNT, kPow2, OutT, 4, true, 4>(a);
  } else if constexpr (kNT == 2 && !kPow2) {
    launch_stream<kNT, kPow2, OutT, 2, true>(a);
  } else {
    launch_stream<kNT, kPow2, OutT, 4, true>(a);
  }
}

}  // namespace

std::string w4a8_fp_gemm(const W4A8FPArgs& a) {
  std::string err = check_stream_args(a, 16, 4);
  if (!err.empty()) return err;
  if (a.K >= (1 << 19)) return "K must be below 2^19, got " + std::to_string(a.K);
  return dispatch_stream(a, a.pow2, [&](auto t, auto nt, auto pow2) {
    launch_variant<decltype(nt)::value, decltype(pow2)::value, decltype(t)>(a);
  });
}

std::string fp4_to_fp8(const uint8_t* packed, const void* sg, bool pow2, int group_size, int N, int K, void* out,
                       cudaStream_t stream) {
  if (N <= 0 || K <= 0 || N % 16 != 0 || K % 64 != 0) return "N must be a positive multiple of 16 and K of 64";
  if (group_size <= 0 || group_size % 16 != 0 || K % group_size != 0) return "group_size must be a multiple of 16 dividing K";
  const unsigned blocks = convert_blocks(N, K);
  constexpr int block = kConvertBlock;
  auto* o = static_cast<uint8_t*>(out);
  if (pow2) {
    fp4_to_fp8_kernel<true><<<blocks, block, 0, stream>>>(packed, sg, group_size, N, K, o);
  } else {
    fp4_to_fp8_kernel<false><<<blocks, block, 0, stream>>>(packed, sg, group_size, N, K, o);
  }
  return launch_status();
}

}  // namespace zq
