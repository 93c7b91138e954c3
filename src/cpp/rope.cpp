// rope.cpp: binding of the fused split + rotary + KV-cache write (src/cuda/rope_cache.cu) used by
// python/zqkernels/ops/rope.py.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>

#include "common.h"
#include "zq_kernels.h"

namespace nb = nanobind;

namespace zqb {

void bind_rope(nb::module_& m) {
  m.def(
      "rope_qkv",
      [](int dtype, uintptr_t qkv, int64_t qkv_stride, uintptr_t cos, uintptr_t sin, int64_t cs_stride_b,
         int64_t cs_stride_s, uintptr_t q_out, uintptr_t k_out, uintptr_t v_out, uintptr_t cache_offset,
         int64_t cache_len, int64_t B, int64_t S, int heads, int kv_heads, int head_dim, int rot_dim, bool advance,
         int device, uintptr_t stream) -> bool {
        const char* name = "rope_qkv";
        if (dtype < 0 || dtype > 2) fail(name, "dtype code must be 0 (bf16), 1 (fp16) or 2 (fp32)");
        if (B < 0 || S < 0) fail(name, "B and S must be >= 0");
        if (B == 0 || S == 0) return false;
        const uintptr_t esize = dtype == 2 ? 4 : 2;
        check_ptr(name, "qkv", qkv, esize);
        check_ptr(name, "q_out", q_out, esize);
        check_ptr(name, "k_out", k_out, esize);
        check_ptr(name, "v_out", v_out, esize);
        if (rot_dim > 0) {
          check_ptr(name, "cos", cos, esize);
          check_ptr(name, "sin", sin, esize);
        }
        if (cache_offset != 0) check_ptr(name, "cache_offset", cache_offset, 8);
        zq::RopeArgs a;
        a.dtype = static_cast<zq::DType>(dtype);
        a.qkv = reinterpret_cast<const void*>(qkv);
        a.qkv_stride = qkv_stride;
        a.cos = reinterpret_cast<const void*>(cos);
        a.sin = reinterpret_cast<const void*>(sin);
        a.cs_stride_b = cs_stride_b;
        a.cs_stride_s = cs_stride_s;
        a.q_out = reinterpret_cast<void*>(q_out);
        a.k_out = reinterpret_cast<void*>(k_out);
        a.v_out = reinterpret_cast<void*>(v_out);
        a.cache_offset = reinterpret_cast<int64_t*>(cache_offset);
        a.advance = advance;
        a.cache_len = cache_len;
        a.B = B;
        a.S = S;
        a.heads = heads;
        a.kv_heads = kv_heads;
        a.head_dim = head_dim;
        a.rot_dim = rot_dim;
        a.stream = reinterpret_cast<cudaStream_t>(stream);
        DeviceGuard guard(device);
        bool advanced = false;
        const std::string err = zq::rope_qkv(a, &advanced);
        if (!err.empty()) fail(name, err);
        return advanced;
      },
      nb::arg("dtype"), nb::arg("qkv"), nb::arg("qkv_stride"), nb::arg("cos"), nb::arg("sin"), nb::arg("cs_stride_b"),
      nb::arg("cs_stride_s"), nb::arg("q_out"), nb::arg("k_out"), nb::arg("v_out"), nb::arg("cache_offset"),
      nb::arg("cache_len"), nb::arg("B"), nb::arg("S"), nb::arg("heads"), nb::arg("kv_heads"), nb::arg("head_dim"),
      nb::arg("rot_dim"), nb::arg("advance"), nb::arg("device"), nb::arg("stream"),
      "Split a QKV GEMM output into heads, rotate q and k (HF's rotary, bit for bit), write q to q_out and k / v\n"
      "to k_out / v_out, or into a static KV cache at *cache_offset (cache_offset != 0). With advance, the kernel\n"
      "adds S to *cache_offset where its launch allows (decode at small batch): returns whether it did.");
}

}  // namespace zqb
