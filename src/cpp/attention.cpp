// attention.cpp: binding of the one-token decode attention (src/cuda/decode_attention.cu) used by
// python/zqkernels/ops/attention.py.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>

#include "common.h"
#include "zq_kernels.h"

namespace nb = nanobind;

namespace zqb {

void bind_attention(nb::module_& m) {
  m.def(
      "decode_attention",
      [](int dtype, uintptr_t q, int64_t q_stride_b, int64_t q_stride_h, uintptr_t k, uintptr_t v, int64_t kv_stride_b,
         int64_t kv_stride_h, int64_t kv_stride_l, uintptr_t mask, int64_t mask_stride_b, int64_t mask_stride_l,
         uintptr_t out, uintptr_t partial_acc, uintptr_t partial_ml, uintptr_t xq, uintptr_t sx, bool fp8, int64_t B,
         int64_t L, int heads, int kv_heads, int head_dim, int splits, int chunk, float scale, int device,
         uintptr_t stream) {
        const char* name = "decode_attention";
        if (dtype < 0 || dtype > 2) fail(name, "dtype code must be 0 (bf16), 1 (fp16) or 2 (fp32)");
        if (B < 0 || L <= 0) fail(name, "B must be >= 0 and L >= 1");
        if (B == 0) return;
        check_ptr(name, "q", q, 16);
        check_ptr(name, "k", k, 16);
        check_ptr(name, "v", v, 16);
        if (xq != 0) {
          check_ptr(name, "xq", xq, 1);
          check_ptr(name, "sx", sx, 4);
        } else {
          check_ptr(name, "out", out, 16);
        }
        check_ptr(name, "partial_acc", partial_acc, 4);
        check_ptr(name, "partial_ml", partial_ml, 4);
        if (mask != 0) check_ptr(name, "mask", mask, 1);
        zq::DecodeAttnArgs a;
        a.dtype = static_cast<zq::DType>(dtype);
        a.q = reinterpret_cast<const void*>(q);
        a.q_stride_b = q_stride_b;
        a.q_stride_h = q_stride_h;
        a.k = reinterpret_cast<const void*>(k);
        a.v = reinterpret_cast<const void*>(v);
        a.kv_stride_b = kv_stride_b;
        a.kv_stride_h = kv_stride_h;
        a.kv_stride_l = kv_stride_l;
        a.mask = reinterpret_cast<const void*>(mask);
        a.mask_stride_b = mask_stride_b;
        a.mask_stride_l = mask_stride_l;
        a.out = reinterpret_cast<void*>(out);
        a.partial_acc = reinterpret_cast<float*>(partial_acc);
        a.partial_ml = reinterpret_cast<float*>(partial_ml);
        a.xq = reinterpret_cast<int8_t*>(xq);
        a.sx = reinterpret_cast<float*>(sx);
        a.fp8 = fp8;
        a.B = B;
        a.L = L;
        a.heads = heads;
        a.kv_heads = kv_heads;
        a.head_dim = head_dim;
        a.splits = splits;
        a.chunk = chunk;
        a.scale = scale;
        a.stream = reinterpret_cast<cudaStream_t>(stream);
        DeviceGuard guard(device);
        const std::string err = zq::decode_attention(a);
        if (!err.empty()) fail(name, err);
      },
      nb::arg("dtype"), nb::arg("q"), nb::arg("q_stride_b"), nb::arg("q_stride_h"), nb::arg("k"), nb::arg("v"),
      nb::arg("kv_stride_b"), nb::arg("kv_stride_h"), nb::arg("kv_stride_l"), nb::arg("mask"), nb::arg("mask_stride_b"),
      nb::arg("mask_stride_l"), nb::arg("out"), nb::arg("partial_acc"), nb::arg("partial_ml"), nb::arg("xq"), nb::arg("sx"),
      nb::arg("fp8"), nb::arg("B"), nb::arg("L"),
      nb::arg("heads"), nb::arg("kv_heads"), nb::arg("head_dim"), nb::arg("splits"), nb::arg("chunk"), nb::arg("scale"),
      nb::arg("device"), nb::arg("stream"),
      "Attention of one query token per sequence against a KV cache with grouped KV heads, split over the keys;\n"
      "out [B, heads, head_dim] = softmax(scale * q k^T, masked) v; with xq != 0, that output quantized per token\n"
      "into xq [B, heads * head_dim] (int8, or FP8 E4M3 with fp8) and sx [B] instead of written to out.");
  m.def(
      "decode_attention_quant_ok",
      [](int heads, int device) {
        DeviceGuard guard(device);
        return zq::decode_attention_quant_ok(heads);
      },
      nb::arg("heads"), nb::arg("device"),
      "Whether decode_attention can quantize its output for this many query heads on this device.");
}

}  // namespace zqb
