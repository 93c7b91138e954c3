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

template <typename T>
__global__ void __launch_bounds__(1024) rope_qkv_kernel(RopeArgs a) {
  pdl_trigger();  // launched with PDL (pdl.cuh): let the next kernel launch, then wait for qkv
  pdl_wait();
  const int64_t t = blockIdx.x;  // token b * S + s
  const int h = blockIdx.y * kHeadsPerCta + threadIdx.y;
  const int H = a.heads, KV = a.kv_heads, hd = a.head_dim;
  if (h >= H + 2 * KV) return;
  const int64_t b = t / a.S, s = t % a.S;
  const T* x = static_cast<const T*>(a.qkv) + t * a.qkv_stride + static_cast<int64_t>(h) * hd;
  const bool rotate = h < H + KV;
  const T* cs = static_cast<const T*>(a.cos) + b * a.cs_stride_b + s * a.cs_stride_s;
  const T* sn = static_cast<const T*>(a.sin) + b * a.cs_stride_b + s * a.cs_stride_s;
  T* dst;
  bool write = true;
  if (h < H) {
    dst = static_cast<T*>(a.q_out) + (t * H + h) * hd;
  } else {
    const int kh = h < H + KV ? h - H : h - H - KV;
    T* base = static_cast<T*>(h < H + KV ? a.k_out : a.v_out);
    if (a.cache_offset != nullptr) {
      const int64_t pos = *a.cache_offset + s;
      write = pos >= 0 && pos < a.cache_len;
      dst = base + ((b * KV + kh) * a.cache_len + pos) * hd;
    } else {
      dst = base + (t * KV + kh) * hd;
    }
  }
  if (!write) return;
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

template <typename T>
std::string launch(const RopeArgs& a) {
  const int nh = a.heads + 2 * a.kv_heads;
  const int tx = a.head_dim >= 128 ? 128 : ((a.head_dim + 31) / 32) * 32;
  const dim3 block(tx, kHeadsPerCta);
  const dim3 grid(static_cast<unsigned>(a.B * a.S), (nh + kHeadsPerCta - 1) / kHeadsPerCta);
  launch_pdl(rope_qkv_kernel<T>, grid, block, 0, a.stream, a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace

std::string rope_qkv(const RopeArgs& a) {
  if (a.B <= 0 || a.S <= 0) return {};
  if (a.heads <= 0 || a.kv_heads <= 0 || a.head_dim <= 0) return "heads, kv_heads and head_dim must be positive";
  if (a.rot_dim < 0 || a.rot_dim > a.head_dim || a.rot_dim % 2 != 0) {
    return "rot_dim must be even and in [0, head_dim], got " + std::to_string(a.rot_dim);
  }
  if (a.qkv == nullptr || a.q_out == nullptr || a.k_out == nullptr || a.v_out == nullptr) return "null pointer";
  if (a.rot_dim > 0 && (a.cos == nullptr || a.sin == nullptr)) return "null cos / sin";
  if (a.cache_offset != nullptr && a.cache_len <= 0) return "cache_len must be positive with a cache";
  if (a.B * a.S > 2147483647LL) return "B * S must fit the grid";
  return with_float_type(a.dtype, [&](auto t) { return launch<decltype(t)>(a); }, "unsupported dtype");
}

}  // namespace zq
