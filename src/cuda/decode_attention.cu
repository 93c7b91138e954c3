// decode_attention.cu: attention of one query token per sequence against a KV cache, with grouped KV
// heads (GQA / MQA), split over the keys (flash-decoding).
//
//   out[b, h, :] = softmax_j(scale * q[b, h] . k[b, h / G, j] + mask[b, j]) @ v[b, h / G, :]
//
// for j < L where mask[b, j] is true (no mask: every j < L), G = heads / kv_heads. At decode the
// cost is reading the cache once: B * kv_heads * L * head_dim * 2 elements. SDPA's kernels are built
// for many query rows: given one row per head they either copy k and v G times (HF's repeat_kv when a
// mask is given) or run 64-row tiles on B * kv_heads CTAs (8 on Llama-3-8B at batch 1: most of the
// GPU idles; docs/FUSED.md has the profile). Here each CTA takes one KV head's G query rows and a
// chunk of <= kChunkMax keys, so B * kv_heads * splits CTAs stream the cache once:
//
//   split kernel  grid (B * kv_heads, splits), 4 warps. Pass 1: a group of LPK lanes per key, each
//                 lane 16 bytes of the key row (kUnroll rows loaded before any is used, so a lane
//                 keeps kUnroll loads in flight), dots for the G rows reduced by shuffles, scores
//                 (log2 domain) into shared memory; the first kUnroll value rows are requested with
//                 the keys (they do not depend on the scores). Pass 2: per row, the chunk's max m and sum l of
//                 exp2(s - m). Pass 3: each lane accumulates p * v for its 16 bytes of dims over its
//                 keys (kUnroll rows in flight); lanes, then warps, are summed. Writes acc
//                 (unnormalised), m and l per row.
//   combine       grid B * heads: out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s, M = max_s m_s;
//                 the splits' (m, l) read by all threads at once, the weights in shared memory, the
//                 acc rows read kUnroll splits at a time.
//   combine_quant (xq given) the same sums, one cluster of 8 CTAs a token (512 threads: one output a
//                 thread at Llama-3-8B's 4 heads of 128 a CTA), and the token's outputs
//                 quantized per token for the next GEMM (o_proj) instead of written: the launch of a
//                 separate quantize_per_token saved at decode.
//
// All arithmetic fp32; out rounded to T once. A row whose keys are all masked gives 0 (SDPA's math
// path gives NaN; nothing in a decoder masks every key). NaN / Inf in q, k, v propagate.
// Reference: python/zqkernels/reference/attention.py. Tests: tests/test_attention*.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "float_convert.cuh"
#include "pdl.cuh"
#include "row_reduce.cuh"
#include "zq_kernels.h"

namespace zq {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;

constexpr int kUnroll = 4;  // key / value rows (or combine splits) a lane loads before using any

template <typename T, int kN>
__device__ __forceinline__ void to_floats(const uint4& raw, float (&f)[kN]) {
  static_assert(kN * sizeof(T) == 16, "one 16-byte load");
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int e = 0; e < kN; ++e) f[e] = to_float(v[e]);
}

template <typename T, int kN>
__device__ __forceinline__ void load_row(const T* p, float (&f)[kN]) {
  to_floats<T, kN>(*reinterpret_cast<const uint4*>(p), f);
}

template <typename T, int kHD, int kG>
__global__ void __launch_bounds__(kThreads) decode_attention_split(DecodeAttnArgs a) {
  constexpr int kEPL = 16 / static_cast<int>(sizeof(T));  // elements per lane: one 16-byte load
  constexpr int kLPK = kHD / kEPL;                         // lanes per key row
  static_assert(kLPK >= 1 && kLPK <= 32 && 32 % kLPK == 0, "head_dim / (16 bytes) must divide 32");
  constexpr int kKPW = 32 / kLPK;  // keys per warp per step
  constexpr int kKPS = kKPW * kWarps;

  __shared__ float s_score[kG][kDecodeChunkMax];
  __shared__ float s_ml[kG][2];
  __shared__ float s_acc[kWarps][kG][kHD];

  pdl_trigger();  // launched with PDL (pdl.cuh): the combine launches now and waits for this grid
  pdl_wait();     // q and the cache come from the kernels before
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int bk = blockIdx.x;  // b * kv_heads + kvh
  const int b = bk / a.kv_heads, kvh = bk % a.kv_heads;
  const int split = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(split) * a.chunk;
  const int n = static_cast<int>(min(static_cast<int64_t>(a.chunk), a.L - j0));
  const int G = a.heads / a.kv_heads;
  const int d0 = (lane % kLPK) * kEPL;
  const int key_lane = warp * kKPW + lane / kLPK;  // this lane group's key within a step

  const T* q = static_cast<const T*>(a.q);
  const T* kbase = static_cast<const T*>(a.k) + b * a.kv_stride_b + kvh * a.kv_stride_h + j0 * a.kv_stride_l;
  const T* vbase = static_cast<const T*>(a.v) + b * a.kv_stride_b + kvh * a.kv_stride_h + j0 * a.kv_stride_l;
  const uint8_t* mask = a.mask == nullptr ? nullptr : static_cast<const uint8_t*>(a.mask) + b * a.mask_stride_b;

  float qf[kG][kEPL];
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    if (g < G) {
      load_row<T, kEPL>(q + b * a.q_stride_b + (kvh * G + g) * a.q_stride_h + d0, qf[g]);
#pragma unroll
      for (int e = 0; e < kEPL; ++e) qf[g][e] *= a.scale * kLog2e;
    } else {
#pragma unroll
      for (int e = 0; e < kEPL; ++e) qf[g][e] = 0.f;
    }
  }

  // The first batch of value rows is requested now, with the keys: it does not depend on the scores,
  // and at decode most CTAs' chunks are one batch (kKPS * kUnroll keys), so pass 3 then waits on no load.
  uint4 vfirst[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int j = u * kKPS + key_lane;
    vfirst[u] = j < n ? *reinterpret_cast<const uint4*>(vbase + j * a.kv_stride_l + d0) : make_uint4(0, 0, 0, 0);
  }

  // Pass 1: scores (log2 domain), masked keys -inf.
  for (int base = 0; base < n; base += kKPS * kUnroll) {
    uint4 raw[kUnroll];
    bool keep[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kKPS + key_lane;
      raw[u] = j < n ? *reinterpret_cast<const uint4*>(kbase + j * a.kv_stride_l + d0) : make_uint4(0, 0, 0, 0);
      keep[u] = mask == nullptr || (j < n && lane % kLPK == 0 && mask[(j0 + j) * a.mask_stride_l] != 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kKPS + key_lane;
      float kf[kEPL];
      to_floats<T, kEPL>(raw[u], kf);
      float dot[kG];
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        dot[g] = 0.f;
#pragma unroll
        for (int e = 0; e < kEPL; ++e) dot[g] = fmaf(qf[g][e], kf[e], dot[g]);
#pragma unroll
        for (int off = kLPK / 2; off > 0; off /= 2) dot[g] += __shfl_xor_sync(0xffffffffu, dot[g], off);
      }
      if (j < n && lane % kLPK == 0) {
#pragma unroll
        for (int g = 0; g < kG; ++g) s_score[g][j] = keep[u] ? dot[g] : -INFINITY;
      }
    }
  }
  __syncthreads();

  // Pass 2: per row, max and sum of exp2(s - max); the scores become probabilities (unnormalised).
  for (int g = warp; g < kG; g += kWarps) {
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, s_score[g][j]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    const float mu = m == -INFINITY ? 0.f : m;  // all masked: every p is 0
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float p = exp2f(s_score[g][j] - mu);
      s_score[g][j] = p;
      l += p;
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) {
      s_ml[g][0] = m;
      s_ml[g][1] = l;
    }
  }
  __syncthreads();

  // Pass 3: acc[g][d] = sum_j p[g][j] * v[j][d]; lanes of one dim slice, then warps, summed.
  float acc[kG][kEPL];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int e = 0; e < kEPL; ++e) acc[g][e] = 0.f;
  for (int base = 0; base < n; base += kKPS * kUnroll) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kKPS + key_lane;
      if (base == 0) {
        raw[u] = vfirst[u];
      } else {
        raw[u] = j < n ? *reinterpret_cast<const uint4*>(vbase + j * a.kv_stride_l + d0) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kKPS + key_lane;
      if (j < n) {
        float vf[kEPL];
        to_floats<T, kEPL>(raw[u], vf);
#pragma unroll
        for (int g = 0; g < kG; ++g) {
          const float p = s_score[g][j];
#pragma unroll
          for (int e = 0; e < kEPL; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
        }
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int e = 0; e < kEPL; ++e) {
#pragma unroll
      for (int off = kLPK; off < 32; off *= 2) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], off);
    }
  if (lane < kLPK) {
#pragma unroll
    for (int g = 0; g < kG; ++g)
#pragma unroll
      for (int e = 0; e < kEPL; ++e) s_acc[warp][g][d0 + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = tid; i < G * kHD; i += kThreads) {
    const int g = i / kHD, d = i % kHD;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += s_acc[w][g][d];
    const int64_t row = (static_cast<int64_t>(b) * a.heads + kvh * G + g) * a.splits + split;
    a.partial_acc[row * kHD + d] = s;
    if (d == 0) {
      a.partial_ml[row * 2] = s_ml[g][0];
      a.partial_ml[row * 2 + 1] = s_ml[g][1];
    }
  }
}

template <typename T, int kHD>
__global__ void __launch_bounds__(kThreads) decode_attention_combine(DecodeAttnArgs a) {
  extern __shared__ float s_w[];  // [splits]: 2^(m_s - M)
  __shared__ float s_red[kWarps];
  pdl_trigger();
  pdl_wait();  // the split kernel's partials
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t bh = blockIdx.x;  // b * heads + h
  const float* ml = a.partial_ml + bh * a.splits * 2;
  float M = -INFINITY;
  for (int s = tid; s < a.splits; s += kThreads) M = fmaxf(M, ml[2 * s]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
  if (lane == 0) s_red[warp] = M;
  __syncthreads();
  M = s_red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) M = fmaxf(M, s_red[w]);
  const float mu = M == -INFINITY ? 0.f : M;
  __syncthreads();  // s_red is reused below
  float l = 0.f;
  for (int s = tid; s < a.splits; s += kThreads) {
    const float w = exp2f(ml[2 * s] - mu);
    s_w[s] = w;
    l += w * ml[2 * s + 1];
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
  if (lane == 0) s_red[warp] = l;
  __syncthreads();
  l = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) l += s_red[w];
  const float inv = l == 0.f ? 0.f : 1.f / l;  // all keys masked: acc is 0, so is out
  T* out = static_cast<T*>(a.out) + bh * kHD;
  const float* pacc = a.partial_acc + bh * a.splits * kHD;
  for (int d = tid; d < kHD; d += kThreads) {
    float acc = 0.f;
    int s = 0;
    for (; s + kUnroll <= a.splits; s += kUnroll) {
      float x[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) x[u] = pacc[(s + u) * kHD + d];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) acc = fmaf(s_w[s + u], x[u], acc);
    }
    for (; s < a.splits; ++s) acc = fmaf(s_w[s], pacc[s * kHD + d], acc);
    out[d] = from_float<T>(acc * inv);
  }
}

// The combine with the next GEMM's input quantization fused (a.xq != nullptr): grid (kC, B), one
// cluster of kC CTAs a token; CTA r combines heads [r HC, (r + 1) HC), HC = heads / kC <= kMaxHC, into
// registers, rounded to T as `out` would be; the token's amax is reduced over the CTA, then the cluster
// (row_reduce.cuh, as the row-op kernels do), and each CTA writes its heads' bytes with
// quantize_per_token's formula (finish_scale / quant): bit for bit quantize_per_token(out).
// kQThreads threads a CTA, so that a thread sums one output over the splits where HC * head_dim <=
// kQThreads (Llama-3-8B: 4 heads of 128 a CTA): the first version's 128 threads summed 4 outputs
// each, one after the other, and measured slower than the two separate launches (docs/FUSED.md).
constexpr int kMaxHC = 8;
constexpr int kQThreads = 512;
constexpr int kQWarps = kQThreads / 32;
constexpr int kQUnroll = 8;  // splits a thread loads before using any

template <typename T, int kHD, int kC>
__global__ void __launch_bounds__(kQThreads) decode_attention_combine_quant(DecodeAttnArgs a) {
  constexpr int kPer = (kMaxHC * kHD + kQThreads - 1) / kQThreads;  // outputs a thread holds at most
  extern __shared__ float s_w[];                                     // [HC][splits]: 2^(m_s - M) per head
  __shared__ float s_inv[kMaxHC];
  pdl_trigger();
  pdl_wait();  // the split kernel's partials
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int HC = a.heads / kC;
  const int64_t b = blockIdx.y;
  const int h0 = static_cast<int>(blockIdx.x) * HC;
  // Per head (a warp each, round robin): the splits' max, weights and normaliser.
  for (int hh = warp; hh < HC; hh += kQWarps) {
    const float* ml = a.partial_ml + (b * a.heads + h0 + hh) * a.splits * 2;
    float M = -INFINITY;
    for (int s = lane; s < a.splits; s += 32) M = fmaxf(M, ml[2 * s]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
    const float mu = M == -INFINITY ? 0.f : M;
    float l = 0.f;
    for (int s = lane; s < a.splits; s += 32) {
      const float w = exp2f(ml[2 * s] - mu);
      s_w[hh * a.splits + s] = w;
      l += w * ml[2 * s + 1];
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) s_inv[hh] = l == 0.f ? 0.f : 1.f / l;
  }
  __syncthreads();
  float val[kPer];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int idx = tid + i * kQThreads;  // hh * kHD + d
    val[i] = 0.f;
    if (idx < HC * kHD) {
      const int hh = idx / kHD, d = idx % kHD;
      const float* pacc = a.partial_acc + (b * a.heads + h0 + hh) * a.splits * kHD + d;
      const float* w = s_w + hh * a.splits;
      float acc = 0.f;
      int s = 0;
      for (; s + kQUnroll <= a.splits; s += kQUnroll) {
        float x[kQUnroll];
#pragma unroll
        for (int u = 0; u < kQUnroll; ++u) x[u] = pacc[(s + u) * kHD];
#pragma unroll
        for (int u = 0; u < kQUnroll; ++u) acc = fmaf(w[s + u], x[u], acc);
      }
      for (; s < a.splits; ++s) acc = fmaf(w[s], pacc[s * kHD], acc);
      val[i] = to_float(from_float<T>(acc * s_inv[hh]));  // the value `out` would hold
      amax = nan_max(amax, val[i]);
    }
  }
  amax = reduce_row<false, kC>(amax, AbsMax{}, 2);
  cluster_done_reading<kC>();
  float pre;
  const float inv = finish_scale(amax, a.sx + b, pre, blockIdx.x == 0 ? tid : 1, a.fp8 ? 448.f : 127.f);
  int8_t* xq = a.xq + b * a.heads * kHD + static_cast<int64_t>(h0) * kHD;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int idx = tid + i * kQThreads;
    if (idx < HC * kHD) xq[idx] = quant(val[i], inv, pre, a.fp8);
  }
  cluster_end<kC>();
}

// Whether this build runs the cluster kernel on the current device (an sm_80-only build also runs on
// an H100, where the cluster path would trap).
bool quant_cluster_runs() {
  static const int version = binary_version(decode_attention_combine_quant<float, 64, kDecodeQuantCtas>);
  return version >= 90 && device_major() >= 9;
}

template <typename T, int kHD>
std::string launch_hd(const DecodeAttnArgs& a) {
  constexpr int kLPK = kHD * static_cast<int>(sizeof(T)) / 16;
  if constexpr (kLPK > 32) {
    return "head_dim " + std::to_string(kHD) + " is not supported for this dtype (at most 32 x 16 bytes per row)";
  } else {
    const int G = a.heads / a.kv_heads;
    const dim3 grid(static_cast<unsigned>(a.B * a.kv_heads), static_cast<unsigned>(a.splits));
    if (G == 1) {
      launch_pdl(decode_attention_split<T, kHD, 1>, grid, dim3(kThreads), 0, a.stream, a);
    } else if (G == 2) {
      launch_pdl(decode_attention_split<T, kHD, 2>, grid, dim3(kThreads), 0, a.stream, a);
    } else if (G <= 4) {
      launch_pdl(decode_attention_split<T, kHD, 4>, grid, dim3(kThreads), 0, a.stream, a);
    } else if (G <= 8) {
      launch_pdl(decode_attention_split<T, kHD, 8>, grid, dim3(kThreads), 0, a.stream, a);
    } else {
      return "heads / kv_heads must be <= 8, got " + std::to_string(G);
    }
    if (a.xq != nullptr) {
      const size_t smem = static_cast<size_t>(a.heads / kDecodeQuantCtas) * a.splits * sizeof(float);
      const auto kernel = decode_attention_combine_quant<T, kHD, kDecodeQuantCtas>;
      if (smem > 48 * 1024) {
        const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (e != cudaSuccess) return std::string("combine shared memory: ") + cudaGetErrorString(e);
      }
      launch_pdl_cluster(kernel, dim3(kDecodeQuantCtas, static_cast<unsigned>(a.B)), dim3(kQThreads), smem, a.stream,
                         static_cast<unsigned>(kDecodeQuantCtas), a);
    } else {
      const size_t smem = static_cast<size_t>(a.splits) * sizeof(float);
      launch_pdl(decode_attention_combine<T, kHD>, dim3(static_cast<unsigned>(a.B * a.heads)), dim3(kThreads), smem,
                 a.stream, a);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return std::string("launch failed: ") + cudaGetErrorString(err);
    return {};
  }
}

}  // namespace

bool decode_attention_quant_ok(int heads) {
  return heads > 0 && heads % kDecodeQuantCtas == 0 && heads / kDecodeQuantCtas <= kMaxHC && quant_cluster_runs();
}

std::string decode_attention(const DecodeAttnArgs& a) {
  if (a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return "heads must be a multiple of kv_heads";
  if (a.xq != nullptr && (a.sx == nullptr || !decode_attention_quant_ok(a.heads))) {
    return "a quantized output needs sx, heads a multiple of " + std::to_string(kDecodeQuantCtas) + " up to " +
           std::to_string(kDecodeQuantCtas * kMaxHC) + " and an sm_90 build on an sm_90 device";
  }
  if (a.chunk <= 0 || a.chunk > kDecodeChunkMax) return "chunk must be in 1.." + std::to_string(kDecodeChunkMax);
  if (a.splits > kDecodeSplitsMax) return "splits must be <= " + std::to_string(kDecodeSplitsMax);
  if (a.splits <= 0 || static_cast<int64_t>(a.splits) * a.chunk < a.L || static_cast<int64_t>(a.splits - 1) * a.chunk >= a.L)
    return "splits * chunk must cover L exactly (no empty split)";
  if (a.B == 0) return {};
  return with_float_type(
      a.dtype,
      [&](auto t) -> std::string {
        using T = decltype(t);
        switch (a.head_dim) {
          case 64: return launch_hd<T, 64>(a);
          case 128: return launch_hd<T, 128>(a);
          case 256: return launch_hd<T, 256>(a);
          default: return "head_dim must be 64, 128 or 256, got " + std::to_string(a.head_dim);
        }
      },
      "dtype must be bf16, fp16 or fp32");
}

}  // namespace zq
