// quantize.cpp: bindings of the quantization kernels (src/cuda/quantize.cu).
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>

#include "common.h"
#include "zq_kernels.h"

namespace nb = nanobind;

namespace zqb {

void bind_quantize(nb::module_& m) {
  m.def(
      "quantize_per_token",
      [](uintptr_t x, int x_dtype, int64_t x_row_stride, uintptr_t xq, uintptr_t sx, int M, int K, int device,
         uintptr_t stream) {
        const char* op = "quantize_per_token";
        if (x_dtype < 0 || x_dtype > 2) {
          fail(op, "x_dtype code must be 0 (bf16), 1 (fp16) or 2 (fp32), got " + std::to_string(x_dtype));
        }
        if (M < 0 || K < 0) fail(op, "M and K must be >= 0");
        if (M == 0 || K == 0) return;
        if (M == 1) x_row_stride = K;  // a single row's stride is never used; torch may report any value
        if (x_row_stride < K) fail(op, "x row stride must be >= K, got " + std::to_string(x_row_stride));
        check_ptr(op, "x", x, x_dtype == 2 ? 4 : 2);
        check_ptr(op, "xq", xq, 1);
        check_ptr(op, "sx", sx, 4);
        DeviceGuard guard(device);
        const std::string err = zq::quantize_per_token_int8(
            reinterpret_cast<const void*>(x), static_cast<zq::DType>(x_dtype), x_row_stride,
            reinterpret_cast<int8_t*>(xq), reinterpret_cast<float*>(sx), M, K, reinterpret_cast<cudaStream_t>(stream));
        if (!err.empty()) fail(op, err);
      },
      nb::arg("x"), nb::arg("x_dtype"), nb::arg("x_row_stride"), nb::arg("xq"), nb::arg("sx"), nb::arg("M"),
      nb::arg("K"), nb::arg("device"), nb::arg("stream"));

  m.def(
      "_debug_set_quantize_threads",
      [](int threads) {
        if (threads != 0 && threads != 128 && threads != 256 && threads != 512 && threads != 1024) {
          fail("_debug_set_quantize_threads", "threads must be 0 (auto), 128, 256, 512 or 1024");
        }
        zq::quantize_per_token_set_threads(threads);
      },
      nb::arg("threads"), "Experiment knob: threads per row of quantize_per_token's register path (0 = auto).");
}

}  // namespace zqb
