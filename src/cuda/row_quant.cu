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
//              kGeluMul,   gelu(x[k]) * x[K + k]       (GeGLU, erf or tanh GeLU; one kernel, the
//              kGeluTanhMul                            kSiluMul one, picks the activation at run time)
//   stage 2  y[k] = rms / layer normalisation of v with fp32 weight (and bias); y = v otherwise.
//            residual_mode == kNormed writes round_T(y) to residual_out (post-LN blocks).
//   stage 3  sx = amax(y) / 127, q[k] = clamp(rint(y[k] * (127 / amax)), -127, 127), exactly as
//            quantize_per_token (NaN-propagating amax, zero rows -> 0, rows below 2^-64 pre-scaled);
//            FP8 E4M3 output (out == kFP8E4M3): sx = amax / 448, q[k] = e4m3_satfinite(y[k] * (448 /
//            amax)) rounded to nearest even (docs/FP8.md).
//            Per-token-group FP8 (group_size g = 32, 64 or 128 > 0, kGroup): the FP8 rule per group
//            j of g consecutive channels instead of per row, sx[j * sx_group_stride + m] (M-major,
//            as DeepGEMM / torch's blockwise _scaled_mm read it). The group's lanes are adjacent in
//            one warp (g / VEC <= 32 chunks), so its amax is a few shuffles and the y values stay in
//            registers: still one read of x, one write of q.
// python/zqkernels/reference/fused.py is the same math in torch (reference/token_group.py the
// group quantization).
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
// Limits: any M, K >= 1 (group output: g divides K); x / residual rows may be strided (unit stride
// along K); weight, bias fp32 [K] with element alignment; q [M, K] contiguous; residual_out rows
// strided; group scales sx_group_stride >= M apart.
// Test: tests/test_fused_gpu.py, tests/test_quantize_gpu.py, tests/test_token_group_quant.py; time:
// benchmarks/bench_fused.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <string>
#include <utility>

#include "row_quant_stages.cuh"
#include "zq_kernels.h"

namespace zq {
namespace {
// kIters > 0: register-resident (kIters chunks of VEC per thread cover the row).
// kIters == 0: streaming (any K; each pass re-reads and recomputes stage 1).
// kWarpRow: each warp owns one row (narrow rows: reductions are shuffles, no CTA barrier);
// otherwise the CTA owns one row.
// kGroup: per-token-group FP8 output (a.group_size > 0). The two outputs are two kernels with one
// body: the per-token kernels keep their names and compile to the PTX they had before.
// kCluster > 1: a cluster of kCluster CTAs (along x; the row is blockIdx.y) splits the row into
// kCluster spans of chunks, each CTA's span register-resident (kIters > 0), per-token output only;
// the row's reductions combine the CTAs' values through distributed shared memory (reduce_row).
template <typename T, RowOp kOp, int VEC, int kIters, bool kWarpRow, bool kGroup, int kCluster = 1>
__device__ __forceinline__ void row_quant_body(const RowQuantArgs& a) {
  static_assert(kCluster == 1 || (kIters > 0 && !kWarpRow && !kGroup),
                "a cluster splits register-resident rows");
  pdl_trigger();  // at entry: the next kernel launches now (a streaming GEMM requests its weights)
  pdl_wait();     // launched with PDL: the input comes from the kernel before (pdl.cuh)
  const int m = kWarpRow       ? blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32
                : kCluster > 1 ? blockIdx.y
                               : blockIdx.x;
  if (kWarpRow && m >= a.M) return;  // whole warps only; warp rows use no CTA barrier
  const int tid = kWarpRow ? threadIdx.x % 32 : threadIdx.x;
  const int K = a.K;
  Row<T> r;
  r.x = static_cast<const T*>(a.x) + m * a.x_stride;
  r.res = a.residual != nullptr ? static_cast<const T*>(a.residual) + m * a.residual_stride : nullptr;
  r.res_out = a.residual_out != nullptr ? static_cast<T*>(a.residual_out) + m * a.residual_out_stride : nullptr;
  r.w = a.weight;
  r.b = a.bias;
  r.gate = a.op;
  int8_t* out = a.xq + static_cast<int64_t>(m) * K;  // INT8 values or E4M3 bytes
  const bool fp8 = a.out == DType::kFP8E4M3;
  const int nchunks = K / VEC;  // VEC divides K on this path (the launcher checks)
  const int stride = kWarpRow ? 32 : blockDim.x;
  Stats st;

  if constexpr (kIters > 0) {
    // This CTA's chunks: [c0, c_end), the whole row unless a cluster splits it.
    const int part = kCluster > 1 ? static_cast<int>(blockIdx.x) : 0;
    const int per = kCluster > 1 ? (nchunks + kCluster - 1) / kCluster : nchunks;
    const int c0 = part * per + tid;  // this thread's first chunk; then every stride
    const int c_end = min(nchunks, part * per + per);
    T buf[kIters][VEC];
    // The norm parameters requested with the row (no round trip for them after the reductions) where
    // the registers allow: up to two vectors a thread (the few-rows CTAs and clusters); the wider
    // warp-row spans (up to 8) would spill, and load them in stage 2.
    constexpr bool kPreload = kIters <= 2;
    Params<kOp, VEC> prm[kPreload ? kIters : 1];
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int c = c0 + i * stride;
      if (c < c_end) {
        stage1<kOp, T, VEC, false>(r, K, c * VEC, false, a.residual_mode, buf[i]);
        if constexpr (kPreload) prm[i].load(r.w, r.b, c * VEC);
      }
    }
    const auto values = [&](int i, int c, float (&y)[VEC]) {  // stage 2 of the thread's i-th chunk, c
      if constexpr (kPreload) {
        stage2<kOp, T, VEC>(buf[i], prm[i], st, y);
      } else {
        stage2<kOp, T, VEC>(buf[i], c * VEC, r.w, r.b, st, y);
      }
    };
    // The residual sum's write after every load: a store between them would serialise the loads'
    // latencies (residual_out may alias the residual), kIters round trips instead of one.
    if constexpr (is_norm(kOp)) {
      if (r.res != nullptr && a.residual_mode == ResidualMode::kSum) {
#pragma unroll
        for (int i = 0; i < kIters; ++i) {
          const int c = c0 + i * stride;
          if (c < c_end)
            *reinterpret_cast<uint4*>(r.res_out + c * VEC) = *reinterpret_cast<const uint4*>(buf[i]);
        }
      }
    }
    if constexpr (is_norm(kOp)) {
      float s = 0.f;
      if constexpr (kOp == RowOp::kLayerNorm) {
#pragma unroll
        for (int i = 0; i < kIters; ++i)
          if (c0 + i * stride < c_end)
#pragma unroll
            for (int j = 0; j < VEC; ++j) s += to_float(buf[i][j]);
        st.mean = reduce_row<kWarpRow, kCluster>(s, Sum{}, 0) / K;
        s = 0.f;
      }
#pragma unroll
      for (int i = 0; i < kIters; ++i)
        if (c0 + i * stride < c_end)
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const float d = to_float(buf[i][j]) - st.mean;
            s += d * d;
          }
      st.rstd = rsqrtf(reduce_row<kWarpRow, kCluster>(s, Sum{}, 1) / K + a.eps);
    }
    if constexpr (kGroup) {
      // Chunk c belongs to group c / L; the L chunks of a group sit on L adjacent lanes of one warp
      // in the same iteration (stride is a multiple of 32, L divides 32, L divides nchunks), so a
      // group is live or dead as a whole.
      const int L = a.group_size / VEC;
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        const int c = tid + i * stride;
        const bool live = c < nchunks;
        float f[VEC];
        float gmax = 0.f;
        if (live) {
          values(i, c, f);
#pragma unroll
          for (int j = 0; j < VEC; ++j) gmax = nan_max(gmax, f[j]);
        }
        gmax = group_reduce(gmax, L);  // the whole warp shuffles, live or not
        if (live) {
          float* col = a.sx + static_cast<int64_t>(c / L) * a.sx_group_stride;
          float pre;
          const float inv = finish_scale(gmax, col + m, pre, c % L, 448.0f);
          if (c % L == 0) zero_scale_padding(col, m, a.M, a.sx_group_stride);
          int8_t q[VEC];
          T y[VEC];
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            q[j] = quant(f[j], inv, pre, true);
            y[j] = from_float<T>(f[j]);
          }
          store_q<VEC>(out + c * VEC, q);
          if (is_norm(kOp) && a.residual_mode == ResidualMode::kNormed) {
            *reinterpret_cast<uint4*>(r.res_out + c * VEC) = *reinterpret_cast<const uint4*>(y);
          }
        }
      }
    } else {
      float amax = 0.f;
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        const int c = c0 + i * stride;
        if (c < c_end) {
          float y[VEC];
          values(i, c, y);
#pragma unroll
          for (int j = 0; j < VEC; ++j) amax = nan_max(amax, y[j]);
        }
      }
      amax = reduce_row<kWarpRow, kCluster>(amax, AbsMax{}, 2);
      cluster_done_reading<kCluster>();
      float pre;
      const float inv = finish_scale(amax, a.sx + m, pre, part == 0 ? tid : 1, fp8 ? 448.0f : 127.0f);
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        const int c = c0 + i * stride;
        if (c < c_end) {
          int8_t q[VEC];
          T y[VEC];
          float f[VEC];
          values(i, c, f);
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
    }  // !kGroup
    cluster_end<kCluster>();
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
    // Stages 1 and 2 of chunk c, recomputed (both passes below).
    auto chunk_values = [&](int c, float (&y)[VEC]) {
      T v[VEC];
      stage1<kOp, T, VEC>(r, K, c * VEC, from_sum, a.residual_mode, v);
      stage2<kOp, T, VEC>(v, c * VEC, r.w, r.b, st, y);
    };
    // Quantizes chunk c with (inv, pre) and writes it (and the normalised row, if asked for).
    auto write_chunk = [&](int c, float inv, float pre, bool fp8_out) {
      float f[VEC];
      chunk_values(c, f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        out[c * VEC + j] = quant(f[j], inv, pre, fp8_out);
        if (is_norm(kOp) && a.residual_mode == ResidualMode::kNormed) r.res_out[c * VEC + j] = from_float<T>(f[j]);
      }
    };
    if constexpr (kGroup) {
      // A warp per group (warp-strided over the row's groups), two passes over its chunks: amax,
      // then quantization (stage 1 and 2 recomputed, as the row passes do). No CTA barrier needed:
      // the residual sum was ordered by the statistics' reductions above.
      const int lane = tid % 32, warp = tid / 32, nwarps = stride / 32;
      const int cpg = a.group_size / VEC;  // chunks per group
      const int groups = K / a.group_size;
      for (int gi = warp; gi < groups; gi += nwarps) {
        const int c0 = gi * cpg;
        float gmax = 0.f;
        for (int c = c0 + lane; c < c0 + cpg; c += 32) {
          float y[VEC];
          chunk_values(c, y);
#pragma unroll
          for (int j = 0; j < VEC; ++j) gmax = nan_max(gmax, y[j]);
        }
        gmax = group_reduce(gmax, 32);
        float* col = a.sx + static_cast<int64_t>(gi) * a.sx_group_stride;
        float pre;
        const float inv = finish_scale(gmax, col + m, pre, lane, 448.0f);
        if (lane == 0) zero_scale_padding(col, m, a.M, a.sx_group_stride);
        for (int c = c0 + lane; c < c0 + cpg; c += 32) write_chunk(c, inv, pre, true);
      }
    } else {
      float amax = 0.f;
      for (int c = tid; c < nchunks; c += stride) {
        float y[VEC];
        chunk_values(c, y);
#pragma unroll
        for (int j = 0; j < VEC; ++j) amax = nan_max(amax, y[j]);
      }
      amax = row_reduce<kWarpRow>(amax, AbsMax{});
      float pre;
      const float inv = finish_scale(amax, a.sx + m, pre, tid, fp8 ? 448.0f : 127.0f);
      for (int c = tid; c < nchunks; c += stride) write_chunk(c, inv, pre, fp8);
    }  // !kGroup
  }
}

template <typename T, RowOp kOp, int VEC, int kIters, bool kWarpRow>
__global__ void __launch_bounds__(kWarpRow ? 128 : 1024)
row_quant_kernel(RowQuantArgs a) {
  row_quant_body<T, kOp, VEC, kIters, kWarpRow, false>(a);
}

template <typename T, RowOp kOp, int VEC, int kIters, bool kWarpRow>
__global__ void __launch_bounds__(kWarpRow ? 128 : 1024)
row_quant_group_kernel(RowQuantArgs a) {
  row_quant_body<T, kOp, VEC, kIters, kWarpRow, true>(a);
}

template <typename T, RowOp kOp, int VEC, int kIters, int kCluster>
__global__ void __launch_bounds__(1024) row_quant_cluster_kernel(RowQuantArgs a) {
  row_quant_body<T, kOp, VEC, kIters, false, false, kCluster>(a);
}

// The kernel of one launch shape, per-token or per-token-group.
template <typename T, RowOp kOp, int VEC, int kIters, bool kWarpRow, bool kGroup>
void launch_kernel(dim3 grid, int threads, const RowQuantArgs& a) {
  if constexpr (kGroup) {
    launch_pdl(row_quant_group_kernel<T, kOp, VEC, kIters, kWarpRow>, grid, dim3(threads), 0, a.stream, a);
  } else {
    launch_pdl(row_quant_kernel<T, kOp, VEC, kIters, kWarpRow>, grid, dim3(threads), 0, a.stream, a);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

constexpr int kFewRows = 64;  // rows up to which the CTA policy favours latency (launch())
constexpr int kWarpRowVecs = 32 * 8;  // vectors a row up to which a warp owns the row (launch())
constexpr int kClusterRows = 32;  // rows up to which a wide row is split over a cluster (cluster_of)

// Whether the current device runs this file's cluster code: compute capability 9.0+ and a binary built
// for it (a build for sm_80 alone also runs on an H100, where the cluster path would trap).
bool cluster_code_runs() {
  static const int version = binary_version(row_quant_cluster_kernel<float, RowOp::kIdentity, 4, 1, 2>);
  return version >= 90 && device_major() >= 9;
}

// CTAs per row for M rows of nvec vectors (1: one CTA or warp per row). At few rows a row op is one
// CTA's latency chain on one SM of 132; where the row is wide enough that the CTA's own work (loads,
// SwiGLU's exponentials, the quantization) outweighs a cluster barrier, a cluster of C CTAs splits it,
// each a span of <= 2048 vectors in registers, and combines the reductions through distributed shared
// memory. H100, CUDA graph of 16 PDL-chained calls (benchmarks/probe_row_threads.py --knob row_cluster,
// benchmarks/results/probe_row_cluster_h100-80gb-hbm3_d712ba6.json), us at M = 1 / 16 / 32 / 64, one CTA
// against 8: silu_mul_quant K = 14336 5.74 / 5.83 / 5.89 / 6.00 against 3.53 / 4.12 / 4.83 / 6.53;
// add_rmsnorm_quant K = 8192 3.79 / 3.90 / 4.13 against 3.68 / 4.24 / 4.83; K = 4096 ops 0.5-1 us slower at
// every cluster size. Hence 8 CTAs from 1536 vectors (a 12288-wide bf16 row) at M <= 32. sm_90+ only.
int cluster_of(int M, int nvec, bool group) {
  if (group || g_cluster_override == 0 || nvec <= kWarpRowVecs) return 1;
  const int C = g_cluster_override > 1 ? g_cluster_override : (M <= kClusterRows && nvec >= 1536 ? 8 : 1);
  // the span fits 1024 threads x 2 vectors; the device check (a cudaGetDevice) only when a cluster is wanted
  return C > 1 && (nvec + C - 1) / C <= 2048 && cluster_code_runs() ? C : 1;
}

template <typename T, RowOp kOp, int VEC, int kCluster>
void launch_cluster(const RowQuantArgs& a, int nvec) {
  const int per = (nvec + kCluster - 1) / kCluster;
  const int iters = per <= 1024 ? 1 : 2;
  const int threads = ((per + iters - 1) / iters + 31) / 32 * 32;
  const auto kernel = iters == 1 ? row_quant_cluster_kernel<T, kOp, VEC, 1, kCluster>
                                 : row_quant_cluster_kernel<T, kOp, VEC, 2, kCluster>;
  launch_pdl_cluster(kernel, dim3(kCluster, a.M), dim3(threads), 0, a.stream, kCluster, a);
}

template <typename T, RowOp kOp, bool kGroup>
std::string launch(const RowQuantArgs& a) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const auto rows_ok = [&](const void* p, int64_t stride) {
    return p == nullptr || (aligned16(p) && stride % kVec == 0);
  };
  const bool vec = a.K % kVec == 0 && rows_ok(a.x, a.x_stride) && rows_ok(a.residual, a.residual_stride) &&
                   rows_ok(a.residual_out, a.residual_out_stride) && aligned16(a.xq) &&
                   (a.weight == nullptr || aligned16(a.weight)) && (a.bias == nullptr || aligned16(a.bias));
  const dim3 grid(a.M);
  const int C = vec ? cluster_of(a.M, a.K / kVec, kGroup) : 1;
  if (!vec) {
    launch_kernel<T, kOp, 1, 0, false, kGroup>(grid, kStreamThreads, a);
  } else if (C == 2) {
    launch_cluster<T, kOp, kVec, 2>(a, a.K / kVec);
  } else if (C == 4) {
    launch_cluster<T, kOp, kVec, 4>(a, a.K / kVec);
  } else if (C == 8) {
    launch_cluster<T, kOp, kVec, 8>(a, a.K / kVec);
  } else if (a.K / kVec <= kWarpRowVecs && g_threads_override == 0) {
    // Narrow rows (<= 2048 bf16 / fp16, 1024 fp32): a warp per row, 4 rows per 128-thread CTA.
    const int nvec = a.K / kVec;
    const dim3 wgrid((a.M + 3) / 4);
    if (nvec <= 32) {
      launch_kernel<T, kOp, kVec, 1, true, kGroup>(wgrid, 128, a);
    } else if (nvec <= 64) {
      launch_kernel<T, kOp, kVec, 2, true, kGroup>(wgrid, 128, a);
    } else if (nvec <= 128) {
      launch_kernel<T, kOp, kVec, 4, true, kGroup>(wgrid, 128, a);
    } else {
      launch_kernel<T, kOp, kVec, 8, true, kGroup>(wgrid, 128, a);
    }
  } else {
    const int nvec = a.K / kVec;
    // Many rows: the smallest CTA that holds the row with <= 4 vectors per thread (occupancy: more
    // resident CTAs, more loads in flight). Few rows (decode, M <= kFewRows): one row's latency
    // chain is the cost, so >= 512 threads with <= 2 vectors each (H200, M = 1..64, bf16: K = 4096
    // 4.4 -> 3.2 us, add + RMSNorm K = 8192 5.7 -> 4.6 us, SwiGLU K = 14336 7.4 -> 6.2 us;
    // benchmarks/probe_row_threads.py). The tuning override wins over both.
    int threads = a.M <= kFewRows ? 512 : 128;
    while (threads < 1024 && nvec > threads * (a.M <= kFewRows ? 2 : 4)) threads *= 2;
    if (g_threads_override > 0) threads = g_threads_override;
    const int iters = (nvec + threads - 1) / threads;
    if (iters <= 1) {
      launch_kernel<T, kOp, kVec, 1, false, kGroup>(grid, threads, a);
    } else if (iters <= 2) {
      launch_kernel<T, kOp, kVec, 2, false, kGroup>(grid, threads, a);
    } else if (iters <= 4) {
      launch_kernel<T, kOp, kVec, 4, false, kGroup>(grid, threads, a);
    } else {
      launch_kernel<T, kOp, kVec, 0, false, kGroup>(grid, threads, a);
    }
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("launch failed: ") + cudaGetErrorString(err);
  return {};
}

template <typename T, bool kGroup>
std::string dispatch_op(const RowQuantArgs& a) {
  switch (a.op) {
    case RowOp::kIdentity: return launch<T, RowOp::kIdentity, kGroup>(a);
    case RowOp::kRMSNorm: return launch<T, RowOp::kRMSNorm, kGroup>(a);
    case RowOp::kLayerNorm: return launch<T, RowOp::kLayerNorm, kGroup>(a);
    case RowOp::kGelu: return launch<T, RowOp::kGelu, kGroup>(a);
    case RowOp::kGeluTanh: return launch<T, RowOp::kGeluTanh, kGroup>(a);
    case RowOp::kSiluMul:
    case RowOp::kGeluMul:
    case RowOp::kGeluTanhMul: return launch<T, RowOp::kSiluMul, kGroup>(a);  // gated: one kernel
  }
  return "unknown row op";
}

template <typename T>
std::string dispatch_group(const RowQuantArgs& a) {
  return a.group_size > 0 ? dispatch_op<T, true>(a) : dispatch_op<T, false>(a);
}

}  // namespace

void row_quant_set_threads(int threads) { g_threads_override = threads; }

int row_quant_set_cluster(int ctas) { return std::exchange(g_cluster_override, ctas); }

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
  if (a.group_size != 0) {
    const std::string g = std::to_string(a.group_size);
    if (a.group_size != 32 && a.group_size != 64 && a.group_size != 128) {
      return "group_size must be 0 (per token), 32, 64 or 128, got " + g;
    }
    if (a.out != DType::kFP8E4M3) {
      return "per-token-group output needs fp8_e4m3 (out), got " + std::string(dtype_name(a.out));
    }
    if (a.K % a.group_size != 0) return "group_size " + g + " must divide K == " + std::to_string(a.K);
    if (a.sx_group_stride < a.M) {
      return "sx_group_stride must be >= M == " + std::to_string(a.M) + ", got " +
             std::to_string(a.sx_group_stride);
    }
  }
  return with_float_type(a.dtype, [&](auto t) { return dispatch_group<decltype(t)>(a); },
                         "unsupported input dtype");
}

namespace {
// The arguments of the plain quantization (RowOp::kIdentity) both entry points below share.
RowQuantArgs identity_args(const void* x, DType x_dtype, int64_t x_row_stride, void* xq, DType out, float* sx, int M,
                           int K, cudaStream_t stream) {
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
  return a;
}
}  // namespace

std::string quantize_per_token(const void* x, DType x_dtype, int64_t x_row_stride, void* xq, DType out, float* sx,
                               int M, int K, cudaStream_t stream) {
  return row_quant(identity_args(x, x_dtype, x_row_stride, xq, out, sx, M, K, stream));
}

std::string quantize_per_token_group(const void* x, DType x_dtype, int64_t x_row_stride, void* xq, float* sx,
                                     int64_t sx_group_stride, int group_size, int M, int K,
                                     cudaStream_t stream) {
  if (group_size <= 0) return "group_size must be 32, 64 or 128, got " + std::to_string(group_size);
  RowQuantArgs a = identity_args(x, x_dtype, x_row_stride, xq, DType::kFP8E4M3, sx, M, K, stream);
  a.sx_group_stride = sx_group_stride;
  a.group_size = group_size;
  return row_quant(a);
}

}  // namespace zq
