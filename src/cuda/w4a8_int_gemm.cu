// w4a8_int_gemm.cu: the W4A8 streaming GEMM with integer (or float) group scales, INT4 weights x
// INT8 activations (Integer Scale, docs/W4A8.md), and the INT4 -> int8 conversion kernel. What it
// shares with the FP4 streaming GEMM (w4a8_gemm.cu): w4a8_stream_common.cuh.
//
// W4A8 with integer group scales (docs/W4A8.md): INT4 codes (layout m16k32) -> the int8 bytes 16 q
// (w4_convert.cuh, int4_word_to_int8x16: 3 instructions per 8 codes), INT8 mma.sync into an int32
// step result P16 = 16 P (one MMA step = 32 consecutive k, inside one group; |P16| <= 2^19), then
// per step:
//   int scales:   acc_i += s_int * P16  (integer multiply-add; acc_i flushed to fp32 every F steps,
//                 F * 2^19 * max(s_int) < 2^31: no overflow for any input; the host sends bounds
//                 from 2^12 on, where not one step fits, to the float variant with float(s_int))
//   float scales: acc_f += r * float(P16)  (exact product, one rounding: as an int32 flush per step)
// and one conversion at the end: y = act(sx[m] * sw[n] * acc / 16 + bias[n]) (the 2^-4 is exact).
// The zero-point INT4 format (zero_point: scale words s | (s z) << 8, w4::fused_bytes) converts the
// codes to their exact int8 values and sums them in one int32 accumulator, with no per-step fold.
// The group scales come group-major, sg_t [G, N] (the host's cached transpose, shared with the
// mixed-input mainloop): the 8 rows of a warp's scale load lie in one 32-byte sector.

#include <cstdint>
#include <string>

#include "gemm_registry.h"        // kInt8MaxK
#include "w4a8_stream_common.cuh"  // kWarps, StreamLaunch, finish_tile, launch_row_tiles, checks
#include "zq_kernels.h"

namespace zq {
namespace {

// INT4 codes (layout m16k32) -> int8 [N, K] row-major, for the group-scaled wgmma GEMM at large M
// (the "convert" baseline of w4a8_gemm, and the tests). One thread per lane chunk of 16 bytes: byte j
// of word 2s + q holds rows r (low nibble) and r + 8 (high nibble) at k = 64c + 32s + 16q + 4t + j
// (the int8 MMA's natural A fragment); int4_word_to_int8 sign-extends both halves.
__global__ void int4_to_int8_kernel(const uint8_t* packed, int N, int K, uint8_t* out) {
  ConvertChunk ch;
  if (!convert_chunk(N, K, ch)) return;
  const int64_t n_lo = ch.n_lo;
  const int c = ch.c, t = ch.t;
  const uint4 v = load_stream(reinterpret_cast<const uint4*>(packed) + ch.i);
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    const Int8Pair q0 = int4_word_to_int8(w[2 * s]), q1 = int4_word_to_int8(w[2 * s + 1]);
    const int64_t k0 = static_cast<int64_t>(c) * 64 + 32 * s + 4 * t;  // word 2s + q: k0 + 16q + j
    uint32_t* lo = reinterpret_cast<uint32_t*>(out + n_lo * K + k0);
    uint32_t* hi = reinterpret_cast<uint32_t*>(out + (n_lo + 8) * K + k0);
    lo[0] = q0.lo;
    lo[4] = q1.lo;
    hi[0] = q0.hi;
    hi[4] = q1.hi;
  }
}

__device__ __forceinline__ void mma_s8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

// The B fragment of one int8 mma.m16n8k32 step in the natural k order (layout m16k32 keeps it):
// lane t's bytes k = 4t..4t+3 and 16+4t..16+4t+3 of the step (p already offset by 4t).
__device__ __forceinline__ uint2 load_b_frag(const uint8_t* p) {
  return make_uint2(__ldg(reinterpret_cast<const uint32_t*>(p)), __ldg(reinterpret_cast<const uint32_t*>(p + 16)));
}

__device__ __forceinline__ void mma_s8_acc(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One chunk of 64 of K of the INT4 kernels: the lane's 32 codes (rows r, r + 8) as 16 q, two int8 MMA
// steps per 8 tokens, each step's P16 folded into the accumulators with its group scales sc (rows r and
// r + 8 of step 0, then of step 1): integer scales into acci (the caller flushes them to accf before a
// batch whose steps could reach the overflow bound), float scales into accf. kZp (the zero-point
// format): the codes become their exact int8 values s (u - z) with the scale words and the MMA sums
// them into acci directly: no fold, no flush (|x s (u - z)| <= 2^14, K < 2^17: exact in int32).
template <int kNT, bool kIntScale, int kSc, bool kZp = false>
__device__ __forceinline__ void int_chunk(const uint4& wv, const uint32_t (&sc)[kSc], const uint2 (&xv)[kNT][2],
                                          int32_t (&acci)[kNT][4], float (&accf)[kNT][4]) {
  const uint32_t w[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    const int g = kSc == 4 ? 2 * s : 0;  // kSc == 2: both steps in one group
    if constexpr (kZp) {
      const FusedRow lo = fused_row<true>(sc[g]), hi = fused_row<true>(sc[g + 1]);  // rows r and r + 8
      const uint32_t af[4] = {fused_bytes(w[2 * s], lo), fused_bytes(w[2 * s] >> 4, hi), fused_bytes(w[2 * s + 1], lo),
                              fused_bytes(w[2 * s + 1] >> 4, hi)};
#pragma unroll
      for (int j = 0; j < kNT; ++j) mma_s8_acc(acci[j], af, xv[j][s].x, xv[j][s].y);
    } else {
      const Int8Pair q0 = int4_word_to_int8x16(w[2 * s]), q1 = int4_word_to_int8x16(w[2 * s + 1]);
      const uint32_t af[4] = {q0.lo, q0.hi, q1.lo, q1.hi};  // the MMA's A registers a0..a3 (16 q)
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        int32_t p[4];
        mma_s8(p, af, xv[j][s].x, xv[j][s].y);
        if constexpr (kIntScale) {
          const int32_t lo = static_cast<int32_t>(sc[g]), hi = static_cast<int32_t>(sc[g + 1]);
          acci[j][0] += lo * p[0];
          acci[j][1] += lo * p[1];
          acci[j][2] += hi * p[2];
          acci[j][3] += hi * p[3];
        } else {
          const float lo = __uint_as_float(sc[g]), hi = __uint_as_float(sc[g + 1]);
          accf[j][0] = fmaf(lo, static_cast<float>(p[0]), accf[j][0]);
          accf[j][1] = fmaf(lo, static_cast<float>(p[1]), accf[j][1]);
          accf[j][2] = fmaf(hi, static_cast<float>(p[2]), accf[j][2]);
          accf[j][3] = fmaf(hi, static_cast<float>(p[3]), accf[j][3]);
        }
      }
    }
  }
}

constexpr int kBatchChunks = 4;                  // chunks a warp requests at once (w4a8_int_stream)
constexpr int kMinFlushSteps = 2 * kBatchChunks;  // the flush is checked once a batch of 2 kBatch steps

// Where a lane's group scales are: rows r and r + 8 of row tile rt, for both MMA steps of a chunk (a
// step lies in one group). The group of step st is floor(st / d), d = group_size / 32, as
// umulhi(2 st, ceil(2^31 / d)) (exact while st * d < 2^31: K < 2^20 is checked on the host), no
// division in the loop. The scales are group-major (a.sg [G, N]): row n's scale of group g at g N + n.
struct ScaleRows {
  const uint32_t* rows;  // int32 or float32 bits
  int64_t gstride;
  uint32_t gmul;
  __device__ __forceinline__ ScaleRows(const W4A8IntArgs& a, int64_t n_lo) {
    const uint32_t d = static_cast<uint32_t>(a.group_size >> 5);
    gmul = (0x80000000u + d - 1) / d;
    rows = static_cast<const uint32_t*>(a.sg) + n_lo;
    gstride = a.N;
  }
  // The scale words of chunk c: rows r, r + 8 of step 0's group (then step 1's when kSc == 4).
  template <int kSc>
  __device__ __forceinline__ void load(int c, uint32_t (&scv)[kSc]) const {
#pragma unroll
    for (int s = 0; s < kSc / 2; ++s) {
      const uint32_t* p = rows + static_cast<int64_t>(__umulhi(static_cast<uint32_t>(4 * c + 2 * s), gmul)) * gstride;
      scv[2 * s] = __ldg(p);
      scv[2 * s + 1] = __ldg(p + 8);
    }
  }
};

// A lane's tokens: the B fragments of chunk c for its kNT token tiles (zeros past M).
template <int kNT>
struct TokenRows {
  const uint8_t* x[kNT];
  bool ok[kNT];
  __device__ __forceinline__ TokenRows(const W4A8IntArgs& a, int tok0, int r, int t) {
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      const int m = tok0 + j * 8 + r;
      ok[j] = m < a.M;
      x[j] = static_cast<const uint8_t*>(a.a) + static_cast<int64_t>(ok[j] ? m : 0) * a.lda + 4 * t;
    }
  }
  __device__ __forceinline__ void load(int c, uint2 (&xv)[kNT][2]) const {
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int s = 0; s < 2; ++s)
        xv[j][s] = ok[j] ? load_b_frag(x[j] + static_cast<int64_t>(c) * 64 + 32 * s) : make_uint2(0, 0);
  }
};

// The overflow bound, checked once a batch (2 kBatch steps; the host sends flush_steps >= 2 kBatch,
// w4a8_int_gemm): flush the integer sums before a batch whose steps could pass flush_steps unflushed.
// A per-step check cost ~13 predicated instructions a step (ptxas if-converts it).
template <int kNT>
__device__ __forceinline__ void flush_before_batch(int& steps, int flush_steps, int32_t (&acci)[kNT][4],
                                                   float (&accf)[kNT][4]) {
  if (steps > flush_steps - 2 * kBatchChunks) {
    steps = 0;
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) accf[j][i] += static_cast<float>(acci[j][i]), acci[j][i] = 0;
  }
  steps += 2 * kBatchChunks;
}

template <int kNT, bool kIntScale, typename OutT, int kMinBlocks = 1, bool kOneGroup = false, bool kZp = false>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) w4a8_int_stream(W4A8IntArgs a, StreamLaunch L) {
  static_assert(!kZp || kIntScale, "the zero-point format has integer scales");
  constexpr int kSc = kOneGroup ? 2 : 4;  // scale words a chunk: rows r, r + 8 of its one or two groups
  constexpr int kBatch = kBatchChunks;
  const int R = L.R;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane >> 2, t = lane & 3;
  const int W = kWarps / R;
  const int rt = blockIdx.x * R + warp / W;
  const int kp = warp % W;
  const int nchunks = a.K >> 6;
  const int tok0 = blockIdx.y * 8 * kNT;
  const bool active = rt < (a.N >> 4);
  if (!L.early) pdl_wait();  // else after the first two batches' weights (StreamLaunch)

  float accf[kNT][4];
  int32_t acci[kNT][4];
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) accf[j][i] = 0.f, acci[j][i] = 0;

  if (active) {
    const uint4* wp = reinterpret_cast<const uint4*>(a.b) + static_cast<int64_t>(rt) * nchunks * 32 + lane;
    const TokenRows<kNT> xs(a, tok0, r, t);
    const ScaleRows scales(a, static_cast<int64_t>(rt) * 16 + r);
    int steps = 0;
    const int step = W * kBatch;  // the warp's K slice: every W-th chunk from kp, kBatch at a time
    uint4 wv[kBatch];
    uint32_t sc[kBatch][kSc];
    const auto fetch = [&](int c, uint4& w, uint32_t (&scv)[kSc]) {
      w = load_stream(wp + static_cast<int64_t>(c) * 32);
      scales.template load<kSc>(c, scv);
    };
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int c = kp + u * W;
      if (c < nchunks) fetch(c, wv[u], sc[u]);
    }
    for (int c0 = kp; c0 < nchunks; c0 += step) {
      uint4 nw[kBatch];
      uint32_t nsc[kBatch][kSc];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int c = c0 + step + u * W;
        if (c < nchunks) fetch(c, nw[u], nsc[u]);
      }
      if (L.early && c0 == kp) pdl_wait();  // two batches of weights requested
      if constexpr (kIntScale && !kZp) flush_before_batch<kNT>(steps, a.flush_steps, acci, accf);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int c = c0 + u * W;
        if (c >= nchunks) break;
        uint2 xv[kNT][2];
        xs.load(c, xv);
        int_chunk<kNT, kIntScale, kSc, kZp>(wv[u], sc[u], xv, acci, accf);
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        wv[u] = nw[u];
#pragma unroll
        for (int i = 0; i < kSc; ++i) sc[u][i] = nsc[u][i];
      }
    }
  }
  constexpr float kUnscale = kZp ? 1.0f : 0.0625f;  // 16 q -> q (the zero-point values are exact)
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) accf[j][i] = (accf[j][i] + static_cast<float>(acci[j][i])) * kUnscale;

  finish_tile<kNT, OutT>(a, accf, warp, lane, kp, W, active, rt, tok0);
}

template <int kNT, bool kIntScale, typename OutT, int kMinBlocks = 1, bool kOneGroup = false, bool kZp = false>
void launch_int(const W4A8IntArgs& a) {
  constexpr auto kernel = w4a8_int_stream<kNT, kIntScale, OutT, kMinBlocks, kOneGroup, kZp>;
  static const int occupancy = occupancy_of(kernel);
  launch_row_tiles(kernel, a, 8 * kNT, occupancy);
}

// The token tile's kernel. At M <= 8 a kernel capped at 80 registers runs 3 CTAs an SM instead of 2
// (95 registers): more warps in flight, and where the row tiles fill one wave only at 3 CTAs an SM
// (2 x SMs < N / 16 <= 3 x SMs: 8B qkv's 384 tiles against 264 / 396 slots) one wave instead of 1.45.
// H100 (benchmarks/results/w4a8_stream_variants_h100-80gb-hbm3_84bf8f2.txt): 8B qkv M = 1 9.60 -> 8.08 us;
// elsewhere the cap is slower (8B gate_up 27.4 -> 34.1, down 15.2 -> 16.6), so only there.
// GemmTuning::w4a8_variant (A / B runs): 7 the capped kernel at every shape, 8 the two-group scale
// loads at every group size, 9 never the capped kernel.
template <int kNT, bool kIntScale, typename OutT, bool kZp = false>
void launch_int_variant(const W4A8IntArgs& a) {
  // Group sizes that are multiples of 64: a chunk's two MMA steps share one group, so 2 scale loads and
  // registers a chunk, not 4 (8B gate_up M = 1: 29.1 -> 27.4 us with the batch flush; same file).
  const int variant = gemm_tuning().w4a8_variant;
  const bool one_group = a.group_size % 64 == 0 && variant != 8;
  if constexpr (kNT == 1) {
    const int sms = a.sm_count > 0 ? a.sm_count : 132, tiles = a.N / 16;
    if (variant == 7 || (variant == 0 && 2 * sms < tiles && tiles <= 3 * sms)) {
      return one_group ? launch_int<kNT, kIntScale, OutT, 3, true, kZp>(a)
                       : launch_int<kNT, kIntScale, OutT, 3, false, kZp>(a);
    }
  }
  return one_group ? launch_int<kNT, kIntScale, OutT, 1, true, kZp>(a) : launch_int<kNT, kIntScale, OutT, 1, false, kZp>(a);
}

}  // namespace

std::string int4_to_int8(const uint8_t* packed, int N, int K, void* out, cudaStream_t stream) {
  if (N <= 0 || K <= 0 || N % 16 != 0 || K % 64 != 0) return "N must be a positive multiple of 16 and K of 64";
  if (reinterpret_cast<uintptr_t>(packed) % 16 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {
    return "packed and out must be 16-byte aligned";
  }
  const unsigned blocks = convert_blocks(N, K);
  constexpr int block = kConvertBlock;
  int4_to_int8_kernel<<<blocks, block, 0, stream>>>(packed, N, K, static_cast<uint8_t*>(out));
  return launch_status();
}

std::string w4a8_int_gemm(const W4A8IntArgs& a) {
  std::string err = check_stream_args(a, 32, 4);
  if (!err.empty()) return err;
  if (a.zero_point) {  // the zero-point format: integer scale words, one exact int32 sum, no flush
    if (!a.int_scales) return "the zero-point format has integer scale words (int_scales)";
    // |x s (u - z)| <= 2^14: the int8 x int8 bound of one exact int32 sum
    if (a.K > kInt8MaxK) return "K must be <= " + std::to_string(kInt8MaxK) + " for the zero-point format";
    return dispatch_stream(a, true, [&](auto t, auto nt, auto) {
      launch_int_variant<decltype(nt)::value, true, decltype(t), true>(a);
    });
  }
  if (a.int_scales && a.flush_steps < kMinFlushSteps) {
    return "flush_steps must be >= " + std::to_string(kMinFlushSteps) + " for integer scales, got " +
           std::to_string(a.flush_steps);
  }
  if (a.K >= (1 << 20)) return "K must be below 2^20, got " + std::to_string(a.K);
  return dispatch_stream(a, a.int_scales, [&](auto t, auto nt, auto int_scales) {
    launch_int_variant<decltype(nt)::value, decltype(int_scales)::value, decltype(t)>(a);
  });
}

}  // namespace zq
