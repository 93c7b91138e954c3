// rope_cache.cu: the attention input of one decoder layer from its QKV GEMM's output, in one kernel:
// split into q / k / v heads, rotary embedding of q and k (HF's apply_rotary_pos_emb, rounded as its
// torch sequence rounds), and, with a static KV cache, k and v written straight into the cache at the
// cache's running offset (python/zqkernels/ops/rope.py; the torch sequence it replaces is
// python/zqkernels/reference/rope.py).
//
// Per token t = (b, s) and head h of the H + 2 KV heads of qkv row t, element j < head_dim:
//   x = qkv[t, h * hd + j]; for q and k heads and j < rd (the rotary width; rd < hd: partial rotary):
//     y = round(round(x * cos[b, s, j]) + round(rot(x)_j * sin[b, s, j])),
//     rot(x)_j = -x[j + rd / 2] (j < rd / 2) or x[j - rd / 2]            (rotate_half)
//   with round() to the input type (bf16 / fp16; fp32: plain IEEE ops, never contracted to an FMA), so
//   the result is bit for bit torch's `x * cos + rotate_half(x) * sin`; otherwise y = x.
//   q -> q_out [B, S, H, hd]; k, v -> k_out / v_out [B, S, KV, hd], or, with a cache, to
//   k_cache / v_cache [B, KV, L, hd] at position off + s, off = *cache_offset (a device scalar, read
//   by the kernel: graph-safe); rows at off + s >= L are not written (the caller checks the length).
//   With `advance`, the kernel also adds S to *cache_offset (HF's StaticLayer.cumulative_length += S)
//   where the launch is at most kAdvanceCtas CTAs of 8 heads (decode at batch 1): one cluster, whose
//   barrier orders every CTA's read of the offset before CTA 0 writes it; otherwise it reports that it
//   did not and the caller adds S (one more launch).
// One CTA per (token, 4 heads); threads along j. Memory-bound and tiny at decode: the point is one
// launch instead of the ~15 torch launches of split / rotate / cat / mul / add / index_copy.
// Test: tests/test_rope_gpu.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "float_convert.cuh"
#include "pdl.cuh"
#include "zq_kernels.h"

namespace zq {
namespace {

constexpr int kHeadsPerCta = 4;
// advance: every item of the launch in one CTA of kAdvanceHeads heads (at most kAdvanceCtas CTAs, one
// cluster): enough for decode at batch 1 (Llama-3-8B: 48 heads, 6 CTAs).
constexpr int kAdvanceHeads = 8;
constexpr int kAdvanceCtas = 8;

// Head h of token t: split, rotate and store (one thread row of the CTA; threads along j).
template <typename T>
__device__ __forceinline__ void rope_head(const RopeArgs& a, int64_t t, int h, int64_t off) {
  const int H = a.heads, KV = a.kv_heads, hd = a.head_dim;
  if (h >= H + 2 * KV) return;
  const int64_t b = t / a.S, s = t % a.S;
  const T* x = static_cast<const T*>(a.qkv) + t * a.qkv_stride + static_cast<int64_t>(h) * hd;
  const bool rotate = h < H + KV;
  const T* cs = static_cast<const T*>(a.cos) + b * a.cs_stride_b + s * a.cs_stride_s;
  const T* sn = static_cast<const T*>(a.sin) + b * a.cs_stride_b + s * a.cs_stride_s;
  T* dst;
  if (h < H) {
    dst = static_cast<T*>(a.q_out) + (t * H + h) * hd;
  } else {
    const int kh = h < H + KV ? h - H : h - H - KV;
    T* base = static_cast<T*>(h < H + KV ? a.k_out : a.v_out);
    if (a.cache_offset != nullptr) {
      const int64_t pos = off + s;
      if (pos < 0 || pos >= a.cache_len) return;
      dst = base + ((b * KV + kh) * a.cache_len + pos) * hd;
    } else {
      dst = base + (t * KV + kh) * hd;
    }
  }
  const int half = a.rot_dim / 2;
  for (int j = threadIdx.x; j < hd; j += blockDim.x) {
    T v = x[j];
    if (rotate && j < a.rot_dim) {
      const float partner = j < half ? -to_float(x[j + half]) : to_float(x[j - half]);
      const T p1 = from_float<T>(__fmul_rn(to_float(v), to_float(cs[j])));
      const T p2 = from_float<T>(__fmul_rn(partner, to_float(sn[j])));
      v = from_float<T>(__fadd_rn(to_float(p1), to_float(p2)));
    }
    dst[j] = v;
  }
}

// grid (B * S, head groups of kHeadsPerCta); block (threads along j, kHeadsPerCta).
template <typename T>
__global__ void __launch_bounds__(1024) rope_qkv_kernel(RopeArgs a) {
  pdl_trigger();  // launched with PDL (pdl.cuh): let the next kernel launch, then wait for qkv
  pdl_wait();
  const int64_t off = a.cache_offset != nullptr ? *a.cache_offset : 0;
  rope_head<T>(a, blockIdx.x, blockIdx.y * kHeadsPerCta + threadIdx.y, off);
}

// The same, with the cache offset advanced by S once every CTA has read it: grid (B * S * head groups of
// kAdvanceHeads) <= kAdvanceCtas CTAs, launched as one cluster (kCluster > 1) or one CTA. The kernel
// that reads the offset next is launched after this grid completes (stream order; under PDL its
// griddepcontrol.wait waits for this grid's completion and memory flush).
template <typename T, bool kCluster>
__global__ void __launch_bounds__(1024) rope_qkv_advance_kernel(RopeArgs a) {
  pdl_trigger();
  pdl_wait();
  int64_t* offset = a.cache_offset;
  const int64_t off = *offset;
  const int groups = (a.heads + 2 * a.kv_heads + kAdvanceHeads - 1) / kAdvanceHeads;
  rope_head<T>(a, blockIdx.x / groups, (blockIdx.x % groups) * kAdvanceHeads + threadIdx.y, off);
  if constexpr (kCluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // release: this thread's read of the offset happens before CTA 0's write below
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
    __trap();  // clusters need sm_90: the host launches this path only there
#endif
  } else {
    __syncthreads();
  }
  if (blockIdx.x == 0 && threadIdx.x == 0 && threadIdx.y == 0) *offset = off + a.S;
}

// Whether this build runs the cluster variant on the current device (compute capability 9.0+ and a
// binary built for it: an sm_80-only build also runs on an H100, where the cluster path would trap).
bool cluster_runs() {
  static const int version = binary_version(rope_qkv_advance_kernel<float, true>);
  return version >= 90 && device_major() >= 9;
}

int threads_x(int head_dim) { return head_dim >= 128 ? 128 : ((head_dim + 31) / 32) * 32; }

// The CTAs of the advancing launch (0: it does not apply, the caller advances the offset).
int advance_ctas(const RopeArgs& a) {
  if (!a.advance || a.cache_offset == nullptr) return 0;
  const int64_t n = a.B * a.S * ((a.heads + 2 * a.kv_heads + kAdvanceHeads - 1) / kAdvanceHeads);
  if (n == 1) return 1;
  return n <= kAdvanceCtas && cluster_runs() ? static_cast<int>(n) : 0;
}

template <typename T>
std::string launch(const RopeArgs& a, bool* advanced) {
  const int nh = a.heads + 2 * a.kv_heads;
  const int tx = threads_x(a.head_dim);
  const int ctas = advance_ctas(a);
  *advanced = ctas > 0;
  if (ctas == 1) {
    launch_pdl(rope_qkv_advance_kernel<T, false>, dim3(1), dim3(tx, kAdvanceHeads), 0, a.stream, a);
  } else if (ctas > 1) {
    launch_pdl_cluster(rope_qkv_advance_kernel<T, true>, dim3(static_cast<unsigned>(ctas)), dim3(tx, kAdvanceHeads),
                       0, a.stream, static_cast<unsigned>(ctas), a);
  } else {
    const dim3 block(tx, kHeadsPerCta);
    const dim3 grid(static_cast<unsigned>(a.B * a.S), (nh + kHeadsPerCta - 1) / kHeadsPerCta);
    launch_pdl(rope_qkv_kernel<T>, grid, block, 0, a.stream, a);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace

std::string rope_qkv(const RopeArgs& a, bool* advanced) {
  *advanced = false;
  if (a.B <= 0 || a.S <= 0) return {};
  if (a.heads <= 0 || a.kv_heads <= 0 || a.head_dim <= 0) return "heads, kv_heads and head_dim must be positive";
  if (a.rot_dim < 0 || a.rot_dim > a.head_dim || a.rot_dim % 2 != 0) {
    return "rot_dim must be even and in [0, head_dim], got " + std::to_string(a.rot_dim);
  }
  if (a.qkv == nullptr || a.q_out == nullptr || a.k_out == nullptr || a.v_out == nullptr) return "null pointer";
  if (a.rot_dim > 0 && (a.cos == nullptr || a.sin == nullptr)) return "null cos / sin";
  if (a.cache_offset != nullptr && a.cache_len <= 0) return "cache_len must be positive with a cache";
  if (a.B * a.S > 2147483647LL) return "B * S must fit the grid";
  return with_float_type(a.dtype, [&](auto t) { return launch<decltype(t)>(a, advanced); }, "unsupported dtype");
}

}  // namespace zq
