// quantize.cpp: bindings of the quantization kernels (src/cuda/row_quant.cu): quantize_per_token
// and the fused row ops (norm / activation + quantization) of python/zqkernels/ops/fused.py.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>

#include "common.h"
#include "zq_kernels.h"

namespace nb = nanobind;

namespace zqb {

namespace {

// Per-token-group arguments shared by quantize_per_token and row_quant: group_size 0 (per token) or
// 32 / 64 / 128 with an FP8 output, and the M-major scale layout's column stride (>= M).
void check_group(const char* op, int group_size, int64_t sx_group_stride, int out_fmt, int M, int K) {
  if (group_size == 0) return;
  if (group_size != 32 && group_size != 64 && group_size != 128) {
    fail(op, "group_size must be 0 (per token), 32, 64 or 128, got " + std::to_string(group_size));
  }
  if (out_fmt != 1) fail(op, "group_size > 0 needs out_fmt 1 (fp8 e4m3), got " + std::to_string(out_fmt));
  if (K % group_size != 0) {
    fail(op, "group_size " + std::to_string(group_size) + " must divide K == " + std::to_string(K));
  }
  if (sx_group_stride < M) {
    fail(op, "sx_group_stride must be >= M == " + std::to_string(M) + ", got " +
                 std::to_string(sx_group_stride));
  }
}

}  // namespace

void bind_quantize(nb::module_& m) {
  m.def(
      "quantize_per_token",
      [](uintptr_t x, int x_dtype, int64_t x_row_stride, uintptr_t xq, uintptr_t sx, int M, int K, int device,
         uintptr_t stream, int out_fmt, int group_size, int64_t sx_group_stride) {
        const char* op = "quantize_per_token";
        if (out_fmt != 0 && out_fmt != 1) fail(op, "out_fmt must be 0 (int8) or 1 (fp8 e4m3), got " + std::to_string(out_fmt));
        check_group(op, group_size, sx_group_stride, out_fmt, M, K);
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
        const void* xp = reinterpret_cast<const void*>(x);
        const auto dt = static_cast<zq::DType>(x_dtype);
        void* qp = reinterpret_cast<void*>(xq);
        float* sp = reinterpret_cast<float*>(sx);
        const auto st = reinterpret_cast<cudaStream_t>(stream);
        const std::string err =
            group_size > 0
                ? zq::quantize_per_token_group(xp, dt, x_row_stride, qp, sp, sx_group_stride, group_size, M, K, st)
                : zq::quantize_per_token(xp, dt, x_row_stride, qp,
                                         out_fmt == 1 ? zq::DType::kFP8E4M3 : zq::DType::kInt8, sp, M, K, st);
        if (!err.empty()) fail(op, err);
      },
      nb::arg("x"), nb::arg("x_dtype"), nb::arg("x_row_stride"), nb::arg("xq"), nb::arg("sx"), nb::arg("M"),
      nb::arg("K"), nb::arg("device"), nb::arg("stream"), nb::arg("out_fmt") = 0, nb::arg("group_size") = 0,
      nb::arg("sx_group_stride") = 0,
      "Token-wise quantization of x into xq: out_fmt 0 = int8 (sx = amax / 127), 1 = fp8 e4m3 (amax / 448).\n"
      "group_size 32 / 64 / 128 (fp8 only): one scale per group of channels, sx[j * sx_group_stride + m].");

  m.def(
      "row_quant",
      [](int op, int dtype, uintptr_t x, int64_t x_stride, uintptr_t residual, int64_t residual_stride,
         uintptr_t residual_out, int64_t residual_out_stride, int residual_mode, uintptr_t weight, uintptr_t bias,
         float eps, uintptr_t xq, uintptr_t sx, int M, int K, int device, uintptr_t stream, int out_fmt,
         int group_size, int64_t sx_group_stride) {
        const char* name = "row_quant";
        if (out_fmt != 0 && out_fmt != 1) fail(name, "out_fmt must be 0 (int8) or 1 (fp8 e4m3), got " + std::to_string(out_fmt));
        check_group(name, group_size, sx_group_stride, out_fmt, M, K);
        if (op < 0 || op > 7) fail(name, "op code must be 0..7, got " + std::to_string(op));
        if (dtype < 0 || dtype > 2) fail(name, "dtype code must be 0 (bf16), 1 (fp16) or 2 (fp32)");
        if (residual_mode < 0 || residual_mode > 2) fail(name, "residual_mode must be 0, 1 or 2");
        if (M < 0 || K < 0) fail(name, "M and K must be >= 0");
        if (M == 0 || K == 0) return;
        const uintptr_t esize = dtype == 2 ? 4 : 2;
        const int64_t width = op >= 5 ? 2 * static_cast<int64_t>(K) : K;  // gated ops (5, 6, 7): [gate | up]
        if (M > 1 && x_stride < width) fail(name, "x row stride must be >= its width");
        check_ptr(name, "x", x, esize);
        if (residual != 0) check_ptr(name, "residual", residual, esize);
        if (residual_out != 0) check_ptr(name, "residual_out", residual_out, esize);
        if (weight != 0) check_ptr(name, "weight", weight, 4);
        if (bias != 0) check_ptr(name, "bias", bias, 4);
        check_ptr(name, "xq", xq, 1);
        check_ptr(name, "sx", sx, 4);
        zq::RowQuantArgs a;
        a.op = static_cast<zq::RowOp>(op);
        a.dtype = static_cast<zq::DType>(dtype);
        a.x = reinterpret_cast<const void*>(x);
        a.x_stride = M == 1 ? width : x_stride;
        a.residual = reinterpret_cast<const void*>(residual);
        a.residual_stride = M == 1 ? K : residual_stride;
        a.residual_out = reinterpret_cast<void*>(residual_out);
        a.residual_out_stride = M == 1 ? K : residual_out_stride;
        a.residual_mode = static_cast<zq::ResidualMode>(residual_mode);
        a.weight = reinterpret_cast<const float*>(weight);
        a.bias = reinterpret_cast<const float*>(bias);
        a.eps = eps;
        a.xq = reinterpret_cast<int8_t*>(xq);
        a.out = out_fmt == 1 ? zq::DType::kFP8E4M3 : zq::DType::kInt8;
        a.sx = reinterpret_cast<float*>(sx);
        a.M = M;
        a.K = K;
        a.stream = reinterpret_cast<cudaStream_t>(stream);
        a.group_size = group_size;
        a.sx_group_stride = sx_group_stride;
        DeviceGuard guard(device);
        const std::string err = zq::row_quant(a);
        if (!err.empty()) fail(name, err);
      },
      nb::arg("op"), nb::arg("dtype"), nb::arg("x"), nb::arg("x_stride"), nb::arg("residual"),
      nb::arg("residual_stride"), nb::arg("residual_out"), nb::arg("residual_out_stride"), nb::arg("residual_mode"),
      nb::arg("weight"), nb::arg("bias"), nb::arg("eps"), nb::arg("xq"), nb::arg("sx"), nb::arg("M"), nb::arg("K"),
      nb::arg("device"), nb::arg("stream"), nb::arg("out_fmt") = 0, nb::arg("group_size") = 0,
      nb::arg("sx_group_stride") = 0,
      "A row op fused with token-wise INT8 (out_fmt 0) or FP8 e4m3 (1) quantization (zq::row_quant;\n"
      "python/zqkernels/ops/fused.py); group_size 32 / 64 / 128 (fp8 only): per-token-group scales,\n"
      "sx[j * sx_group_stride + m].");

  m.def(
      "_debug_set_quantize_threads",
      [](int threads) {
        if (threads != 0 && threads != 128 && threads != 256 && threads != 512 && threads != 1024) {
          fail("_debug_set_quantize_threads", "threads must be 0 (auto), 128, 256, 512 or 1024");
        }
        zq::row_quant_set_threads(threads);
      },
      nb::arg("threads"), "Experiment knob: threads per row of the row-quant kernels' register path (0 = auto).");
  m.def(
      "_debug_set_row_cluster",
      [](int ctas) {
        if (ctas != -1 && ctas != 0 && ctas != 2 && ctas != 4 && ctas != 8) {
          fail("_debug_set_row_cluster",
               "CTAs per row must be -1 (auto), 0 (never), 2, 4 or 8, got " + std::to_string(ctas));
        }
        return zq::row_quant_set_cluster(ctas);
      },
      nb::arg("ctas"),
      "Row ops at few rows: CTAs per row (a cluster splits the row; -1 automatic, the default; 0 never; "
      "2, 4, 8 forced where the row fits and the device runs clusters). Returns the previous setting "
      "(env ZQKERNELS_ROW_CLUSTER=0: never).");
}

}  // namespace zqb
